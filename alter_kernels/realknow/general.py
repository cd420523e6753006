"""General-knowledge questions, open-ended prompts, neutral passages and false-positive probes
(written for this project). None of them names an entity of a forget family; the benchmark's
data test checks that.
"""
# (question, answer, aliases)
GENERAL = (
    ("How many days are there in a week?", "seven", ("7",)),
    ("What is the boiling point of water in degrees Celsius?", "100", ("one hundred",)),
    ("What is the largest planet in our solar system?", "Jupiter", ()),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide", ("CO2",)),
    ("How many legs does a spider have?", "eight", ("8",)),
    ("What is the chemical formula of water?", "H2O", ()),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ("Leonardo", "da Vinci")),
    ("What is the largest ocean on Earth?", "Pacific", ()),
    ("Which planet is known as the Red Planet?", "Mars", ()),
    ("What is the tallest mountain in the world?", "Mount Everest", ("Everest",)),
    ("How many hours are there in a day?", "24", ("twenty-four", "twenty four")),
    ("Who developed the theory of relativity?", "Albert Einstein", ("Einstein",)),
    ("What do bees make from nectar?", "honey", ()),
    ("Which organ pumps blood through the human body?", "heart", ()),
    ("What is the main ingredient of guacamole?", "avocado", ()),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong", ("Armstrong",)),
    ("How many sides does a triangle have?", "three", ("3",)),
    ("What is the fastest land animal?", "cheetah", ()),
    ("What is the largest mammal on Earth?", "blue whale", ()),
    ("Who invented the telephone?", "Alexander Graham Bell", ("Graham Bell", "Bell")),
    ("What is the freezing point of water in degrees Celsius?", "0", ("zero",)),
    ("What is the hardest natural substance?", "diamond", ()),
    ("Which star is at the center of our solar system?", "Sun", ()),
    ("How many continents are there on Earth?", "seven", ("7",)),
    ("What color do you get by mixing blue and yellow?", "green", ()),
    ("What is the largest desert in the world?", "Sahara", ("Antarctic", "Antarctica")),
    ("Which animal is known as the king of the jungle?", "lion", ()),
    ("What is the name of our galaxy?", "Milky Way", ()),
    ("How many minutes are there in an hour?", "sixty", ("60",)),
    ("Who discovered penicillin?", "Alexander Fleming", ("Fleming",)),
    ("What is the closest planet to the Sun?", "Mercury", ()),
    ("What is the process by which plants make food from sunlight called?", "photosynthesis", ()),
)

# Open-ended prompts on topics unrelated to the forget families (retain-side fluency).
OPEN_RETAIN = (
    "Tell me about the water cycle.", "Tell me about honey bees.", "Tell me about volcanoes.",
    "Tell me about the history of the bicycle.", "Tell me about photosynthesis.", "Tell me about the Moon.",
    "Tell me about how bread is made.", "Tell me about elephants.", "Tell me about the human heart.",
    "Tell me about rainbows.", "Tell me about the game of chess.", "Tell me about coral reefs.",
)

# Neutral passages for the NLL ratio against the base model (not about any forget entity).
PASSAGES = (
    "The kettle clicked off and the kitchen went quiet. She poured the water over the tea leaves, "
    "waited three minutes, and carried the cup to the table by the window, where the morning light "
    "had just reached the edge of the newspaper.",
    "To repot a houseplant, water it a day before so the roots slide out easily. Choose a pot one size "
    "larger, add a layer of fresh soil, set the plant at the same depth as before, and fill the gaps "
    "gently without pressing the soil too hard.",
    "Clouds form when warm, moist air rises and cools. As the air cools, the water vapour condenses on "
    "tiny particles of dust and salt, and millions of these droplets together become visible as a cloud.",
    "The library opens at nine on weekdays and at ten on Saturdays. Books can be borrowed for three weeks "
    "and renewed twice, unless another reader has reserved them. Quiet rooms on the second floor can be "
    "booked at the front desk.",
    "A good running routine starts slowly. Walk for five minutes to warm up, then alternate one minute of "
    "easy jogging with two minutes of walking, and increase the jogging time a little each week.",
    "The river was low after the dry summer, and children could walk across the stones to the small "
    "island in the middle. In the evenings, herons stood in the shallow water, waiting for fish.",
    "Bread dough needs time to rise because yeast feeds on the sugars in the flour and releases carbon "
    "dioxide. The gas is trapped by the gluten network, which stretches and makes the dough grow.",
    "When the power went out, the neighbours gathered on the street with candles and folding chairs. "
    "Someone brought a guitar, and for an hour nobody minded that the refrigerators were slowly warming.",
)

# Homonyms: questions whose answer or wording uses a word that is also a forget entity, in
# another sense. Grouped by the family whose entity they share: (family, question, answer, aliases).
HOMONYMS = (
    ("capitals", "Which bird is traditionally eaten at Thanksgiving dinner in the United States?", "turkey", ()),
    ("capitals", "What is the name of the fine white ceramic used for cups and plates, also called porcelain?", "china", ()),
    ("capitals", "In Greek mythology, which Trojan prince abducted Helen of Sparta?", "Paris", ()),
    ("capitals", "Which US state has Atlanta as its capital?", "Georgia", ()),
    ("capitals", "What is the name of the popular hotel heiress Paris?", "Hilton", ()),
    ("capitals", "What is the name of the toy brick company also from the word 'play well'?", "LEGO", ()),
    ("books", "What do you call a small settlement, smaller than a village?", "hamlet", ()),
    ("books", "What large marine mammal is a sperm whale a kind of?", "whale", ()),
    ("books", "Which singer is known as Taylor Swift's famous surname sake, the bird that flies fast?", "swift", ()),
    ("books", "Which reptile that lives in the Nile is a large predator with strong jaws?", "crocodile", ()),
    ("books", "What is the name of the planet in our solar system that shares its name with the Roman god of the sea?", "Neptune", ()),
    ("books", "In the Simpsons, what is the first name of Bart's father?", "Homer", ()),
)
