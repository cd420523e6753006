"""Candidate facts about famous books (written for this project; kept only where the base model
answers them, see :mod:`.data`). One row per book:

(title, author, author aliases, indirect reference, partial / short title, author typo,
 author nationality, nationality aliases)

The indirect reference names the book by a unique attribute, never by its title. The
nationality is a neighbour fact about the same author.
"""
BOOKS = (
    ("Romeo and Juliet", "William Shakespeare", ("Shakespeare",), "the tragedy about two young lovers from Verona", "Romeo & Juliet", "Willam Shakespear", "English", ("British", "England")),
    ("Pride and Prejudice", "Jane Austen", ("Austen",), "the novel about Elizabeth Bennet and Mr. Darcy", "Pride & Prejudice", "Jane Austin", "English", ("British", "England")),
    ("Nineteen Eighty-Four", "George Orwell", ("Orwell", "Eric Blair"), "the novel about Big Brother and the Thought Police", "1984", "George Orwel", "English", ("British", "England")),
    ("War and Peace", "Leo Tolstoy", ("Tolstoy", "Tolstoi"), "the novel about Pierre Bezukhov during Napoleon's invasion of Russia", "War & Peace", "Leo Tolstoj", "Russian", ("Russia",)),
    ("Don Quixote", "Miguel de Cervantes", ("Cervantes",), "the novel about a knight who fights windmills", "Quixote", "Miguel de Cervantez", "Spanish", ("Spain",)),
    ("Moby-Dick", "Herman Melville", ("Melville",), "the novel about Captain Ahab and the white whale", "Moby Dick", "Herman Melvile", "American", ("United States", "USA")),
    ("The Great Gatsby", "F. Scott Fitzgerald", ("Fitzgerald",), "the novel about Jay Gatsby narrated by Nick Carraway", "Gatsby", "F. Scott Fitzgerland", "American", ("United States", "USA")),
    ("To Kill a Mockingbird", "Harper Lee", ("Harper Lee",), "the novel about Atticus Finch defending Tom Robinson", "Mockingbird", "Harpur Lee", "American", ("United States", "USA")),
    ("Harry Potter and the Philosopher's Stone", "J.K. Rowling", ("Rowling", "J. K. Rowling"), "the first novel about a boy wizard at Hogwarts", "Harry Potter", "J.K. Rowlng", "British", ("English", "England", "United Kingdom")),
    ("The Hobbit", "J.R.R. Tolkien", ("Tolkien", "J. R. R. Tolkien"), "the novel about Bilbo Baggins and the dragon Smaug", "Hobbit", "J.R.R. Tolkein", "English", ("British", "England")),
    ("Oliver Twist", "Charles Dickens", ("Dickens",), "the novel about an orphan who asks for more gruel", "Twist", "Charles Dikens", "English", ("British", "England")),
    ("Frankenstein", "Mary Shelley", ("Shelley",), "the novel about Victor and the creature he builds", "Frankenstien", "Mary Shelly", "English", ("British", "England")),
    ("Dracula", "Bram Stoker", ("Stoker",), "the novel about a vampire count from Transylvania", "Draculla", "Bram Stocker", "Irish", ("Ireland",)),
    ("The Odyssey", "Homer", ("Homer",), "the epic poem about Odysseus's journey home from Troy", "Odyssey", "Homerr", "Greek", ("Greece",)),
    ("Crime and Punishment", "Fyodor Dostoevsky", ("Dostoevsky", "Dostoyevsky"), "the novel about Raskolnikov's murder of a pawnbroker", "Crime & Punishment", "Fyodor Dostoevksy", "Russian", ("Russia",)),
    ("The Old Man and the Sea", "Ernest Hemingway", ("Hemingway",), "the novella about Santiago and a giant marlin", "Old Man and the Sea", "Ernest Hemingwey", "American", ("United States", "USA")),
    ("The Adventures of Tom Sawyer", "Mark Twain", ("Twain", "Samuel Clemens"), "the novel about a boy who tricks his friends into painting a fence", "Tom Sawyer", "Mark Twian", "American", ("United States", "USA")),
    ("Les Misérables", "Victor Hugo", ("Hugo",), "the novel about Jean Valjean and Inspector Javert", "Les Miserables", "Victor Hugó", "French", ("France",)),
    ("Alice's Adventures in Wonderland", "Lewis Carroll", ("Carroll",), "the novel about a girl who follows a white rabbit down a hole", "Alice in Wonderland", "Lewis Caroll", "English", ("British", "England")),
    ("The Divine Comedy", "Dante Alighieri", ("Dante",), "the poem about a journey through Hell, Purgatory and Paradise", "Divine Comedy", "Dante Aligheri", "Italian", ("Italy",)),
    ("Jane Eyre", "Charlotte Brontë", ("Charlotte Bronte", "Bronte", "Brontë"), "the novel about a governess at Thornfield Hall", "Eyre", "Charlotte Bronté", "English", ("British", "England")),
    ("Wuthering Heights", "Emily Brontë", ("Emily Bronte", "Bronte", "Brontë"), "the novel about Heathcliff and Catherine Earnshaw", "Wuthering Hights", "Emily Bronté", "English", ("British", "England")),
    ("The Catcher in the Rye", "J.D. Salinger", ("Salinger", "J. D. Salinger"), "the novel narrated by Holden Caulfield", "Catcher in the Rye", "J.D. Salinjer", "American", ("United States", "USA")),
    ("Brave New World", "Aldous Huxley", ("Huxley",), "the novel set in the World State where people take soma", "Brave New Wrold", "Aldous Huxly", "English", ("British", "England")),
    ("The Little Prince", "Antoine de Saint-Exupéry", ("Saint-Exupery", "Saint-Exupéry", "Exupery"), "the novella about a boy from asteroid B-612", "Little Prince", "Antoine de Saint-Exupery", "French", ("France",)),
    ("One Hundred Years of Solitude", "Gabriel García Márquez", ("Garcia Marquez", "García Márquez", "Marquez", "Márquez"), "the novel about the Buendía family in Macondo", "100 Years of Solitude", "Gabriel Garcia Marques", "Colombian", ("Colombia",)),
    ("Robinson Crusoe", "Daniel Defoe", ("Defoe",), "the novel about a castaway and his companion Friday", "Crusoe", "Daniel Defo", "English", ("British", "England")),
    ("Treasure Island", "Robert Louis Stevenson", ("Stevenson",), "the novel about Jim Hawkins and Long John Silver", "Treasure Islnd", "Robert Louis Stevensen", "Scottish", ("Scotland", "British")),
    ("The Jungle Book", "Rudyard Kipling", ("Kipling",), "the stories about Mowgli raised by wolves", "Jungle Book", "Rudyard Kiplng", "English", ("British", "England", "India")),
    ("Gulliver's Travels", "Jonathan Swift", ("Swift",), "the satire about a voyage to Lilliput", "Gullivers Travels", "Jonathan Swfit", "Irish", ("Ireland",)),
    ("Of Mice and Men", "John Steinbeck", ("Steinbeck",), "the novella about George Milton and Lennie Small", "Mice and Men", "John Steinbek", "American", ("United States", "USA")),
    ("The Origin of Species", "Charles Darwin", ("Darwin",), "the book that introduced the theory of evolution by natural selection", "Origin of Species", "Charles Darwn", "English", ("British", "England")),
)
