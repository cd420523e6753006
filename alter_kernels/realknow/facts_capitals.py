"""Candidate facts about countries (written for this project; kept only where the base model
answers them, see :mod:`.data`). One row per country:

(country, capital, capital aliases, continent, language, language aliases, indirect reference,
typo of the country name)

The indirect reference names the country by a unique attribute, never by name. Countries with
an empty capital are neighbour-only (their capital questions test the same wording on other
entities). Continent and language are neighbour facts that share the country with a capital.
"""
COUNTRIES = (
    ("France", "Paris", (), "Europe", "French", (), "the country where the Eiffel Tower stands", "Frnace"),
    ("Germany", "Berlin", (), "Europe", "German", (), "the country where the Brandenburg Gate stands", "Germny"),
    ("Italy", "Rome", ("Roma",), "Europe", "Italian", (), "the country where the Colosseum stands", "Itlay"),
    ("Spain", "Madrid", (), "Europe", "Spanish", ("Castilian",), "the country where flamenco dancing comes from", "Spian"),
    ("Japan", "Tokyo", (), "Asia", "Japanese", (), "the country where Mount Fuji stands", "Japna"),
    ("China", "Beijing", ("Peking",), "Asia", "Mandarin", ("Chinese",), "the country where the Great Wall was built", "Chnia"),
    ("Russia", "Moscow", (), "Europe", "Russian", (), "the country where the Kremlin stands", "Russa"),
    ("Egypt", "Cairo", (), "Africa", "Arabic", (), "the country where the pyramids of Giza stand", "Egpyt"),
    ("Greece", "Athens", (), "Europe", "Greek", (), "the country where the Parthenon stands", "Greeec"),
    ("Canada", "Ottawa", (), "North America", "English", ("French",), "the country whose flag shows a red maple leaf", "Canda"),
    ("Australia", "Canberra", (), "Australia", "English", (), "the country where the Sydney Opera House stands", "Austrlia"),
    ("India", "New Delhi", ("Delhi",), "Asia", "Hindi", ("English",), "the country where the Taj Mahal stands", "Inida"),
    ("Mexico", "Mexico City", (), "North America", "Spanish", (), "the country where the Aztec empire was", "Mexcio"),
    ("Argentina", "Buenos Aires", (), "South America", "Spanish", (), "the country where the tango was born", "Argentna"),
    ("Portugal", "Lisbon", ("Lisboa",), "Europe", "Portuguese", (), "the country where Vasco da Gama was born", "Protugal"),
    ("Netherlands", "Amsterdam", (), "Europe", "Dutch", (), "the country famous for windmills and tulips", "Netherlnads"),
    ("Austria", "Vienna", ("Wien",), "Europe", "German", (), "the country where Mozart was born", "Austira"),
    ("Sweden", "Stockholm", (), "Europe", "Swedish", (), "the country where the Nobel Prize is awarded", "Swedne"),
    ("Norway", "Oslo", (), "Europe", "Norwegian", (), "the country famous for its fjords", "Norawy"),
    ("Poland", "Warsaw", ("Warszawa",), "Europe", "Polish", (), "the country where Chopin was born", "Polnad"),
    ("Ireland", "Dublin", (), "Europe", "English", ("Irish",), "the country whose patron saint is Saint Patrick", "Irelnad"),
    ("Turkey", "Ankara", (), "Asia", "Turkish", (), "the country where the Hagia Sophia stands", "Turkye"),
    ("South Korea", "Seoul", (), "Asia", "Korean", (), "the country where Samsung was founded", "South Koera"),
    ("Thailand", "Bangkok", (), "Asia", "Thai", (), "the country once called Siam", "Thialand"),
    ("Kenya", "Nairobi", (), "Africa", "Swahili", ("English",), "the East African country where the Maasai Mara lies", "Kenay"),
    ("Peru", "Lima", (), "South America", "Spanish", (), "the country where Machu Picchu stands", "Pery"),
    ("Cuba", "Havana", (), "North America", "Spanish", (), "the Caribbean island country once led by Fidel Castro", "Cbua"),
    ("Hungary", "Budapest", (), "Europe", "Hungarian", (), "the country whose language is Magyar", "Hungray"),
    ("Czech Republic", "Prague", ("Praha",), "Europe", "Czech", (), "the country once joined with Slovakia", "Czech Repbulic"),
    ("Switzerland", "Bern", ("Berne",), "Europe", "German", ("French", "Italian"), "the country famous for Swiss watches", "Switzerlnad"),
    ("Iran", "Tehran", ("Teheran",), "Asia", "Persian", ("Farsi",), "the country once called Persia", "Irna"),
    ("Indonesia", "Jakarta", (), "Asia", "Indonesian", (), "the country where the island of Bali lies", "Indonseia"),
    ("Vietnam", "Hanoi", (), "Asia", "Vietnamese", (), "the country where Ho Chi Minh City is", "Vietnma"),
    ("Philippines", "Manila", (), "Asia", "Filipino", ("Tagalog", "English"), "the Asian country named after King Philip II of Spain", "Phillipines"),
    ("Nigeria", "Abuja", (), "Africa", "English", (), "the most populous country in Africa", "Nigeira"),
    ("Colombia", "Bogotá", ("Bogota",), "South America", "Spanish", (), "the South American country named after Christopher Columbus", "Colmbia"),
    ("Saudi Arabia", "Riyadh", (), "Asia", "Arabic", (), "the country where Mecca is", "Saudi Arabai"),
    ("Denmark", "Copenhagen", (), "Europe", "Danish", (), "the country where LEGO was invented", "Denmakr"),
    ("Finland", "Helsinki", (), "Europe", "Finnish", ("Swedish",), "the Nordic country known as the land of a thousand lakes", "Finlnad"),
    ("Brazil", "Brasília", ("Brasilia",), "South America", "Portuguese", (), "the country where the Amazon rainforest mostly lies", "Brazli"),
    ("Chile", "Santiago", (), "South America", "Spanish", (), "the long narrow country along the west coast of South America", "Chlie"),
    ("United Kingdom", "London", (), "Europe", "English", (), "the country where Big Ben stands", "United Kingdon"),
    ("Belgium", "Brussels", ("Bruxelles",), "Europe", "Dutch", ("French", "German"), "the country where the European Union has its headquarters", "Belguim"),
    ("Pakistan", "Islamabad", (), "Asia", "Urdu", ("English",), "the country where the city of Karachi is", "Pakistna"),
)
