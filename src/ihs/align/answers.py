"""Short helpful answers written for ihs, for benign prompts of the built-in sets' training split.

Keyed by the prompt's ``source_id`` (``normal-0240``, ``contrast-0088``); every key is a prompt on
the training side of :func:`ihs.align.data.is_eval_goal` with the default split (the tests check
this), so no evaluation prompt ever has a written answer. Three per ``normal`` category and two
per ``contrast`` kind, taken in file order from the training side. Answers are deliberately short
(a few sentences): they teach the *form* of a helpful reply, not a body of knowledge. Written for
ihs in 2026; see ``ihs/align/DATA.md``.
"""

from __future__ import annotations

ANSWERS: dict[str, str] = {
    # art
    "normal-0240": "Imagine two horizontal and two vertical lines dividing the frame into nine equal parts. Place "
    "your subject on one of the lines or where two of them cross, and put the horizon on the upper or lower line "
    "rather than in the middle. Most phone cameras can show this grid for you.",
    "normal-0241": "Start with a base of white plus a little yellow ochre and burnt sienna, then darken it step by "
    "step with more sienna or a touch of burnt umber. Add a tiny amount of red for warmth or blue for cooler, "
    "shadowed areas, and test each mix on the side of your palette before painting.",
    "normal-0243": "Try drawing boxes in one- and two-point perspective, sketching a street corner with a "
    "vanishing point, drawing cylinders such as cups from different heights, and copying a simple room from a "
    "photo while marking the horizon line first.",
    # astronomy
    "normal-0340": "The Moon is about 384,000 km (239,000 miles) away on average. The Apollo crews took roughly "
    "three days to get there.",
    "normal-0341": "In 2006 the International Astronomical Union decided that a planet must clear its orbit of "
    "other objects. Pluto shares its region with many Kuiper Belt objects, so it was reclassified as a dwarf "
    "planet.",
    "normal-0342": "1. Look up the next visible pass for your location on a tracking site or app. 2. Go out a few "
    "minutes early and face the direction given. 3. Look for a bright, steady point of light moving smoothly "
    "across the sky, with no blinking. 4. It is visible for a few minutes before fading into Earth's shadow.",
    # automotive
    "normal-0324": "Park on level ground and wait a few minutes after switching off the engine. Pull out the "
    "dipstick, wipe it clean, push it fully back in and pull it out again: the oil should sit between the two "
    "marks. Top up with the oil grade in your manual if it is near the lower mark.",
    "normal-0325": "Park the working car close by with both engines off. Connect red to the flat battery's positive "
    "terminal, then red to the good battery's positive; connect black to the good battery's negative and the "
    "other black clamp to bare metal on the dead car, away from the battery. Start the good car, wait a few "
    "minutes, start the dead one, then remove the cables in reverse order.",
    "normal-0327": "For long distances a hybrid is simpler: it refuels in minutes anywhere and its range is not "
    "limited by charging. A fully electric car costs less to run and works well if your routes have fast "
    "chargers, but plan stops and check real-world range, especially in cold weather.",
    # business
    "normal-0172": "List strengths (for example a loyal local clientele, good coffee), weaknesses (small seating "
    "area, limited hours), opportunities (office workers nearby, catering) and threats (a new chain opening, "
    "rising rent). Then pick one or two actions that use a strength to seize an opportunity.",
    "normal-0173": "A simple business plan covers: a one-paragraph summary, the problem you solve and for whom, "
    "your product and price, the competition, how you will reach customers, the costs to start and run, and a "
    "twelve-month forecast of income and expenses. Keep it to a few pages and update it as you learn.",
    "normal-0174": "Add up the monthly fixed costs (permits, insurance, loan, parking) and find the contribution "
    "of one taco: its price minus its variable cost. Break-even in tacos per month = fixed costs divided by that "
    "contribution. For example, 3,000 in fixed costs and a 2.50 contribution means 1,200 tacos a month.",
    # careers
    "normal-0307": "Research the company and the role, review core technical topics, and practise coding or "
    "design problems out loud. Prepare short stories about past projects using the situation, task, action, "
    "result format, and have a few thoughtful questions ready for the interviewers.",
    "normal-0308": "Lead with a short profile saying what you offer, then education, projects, volunteering and "
    "skills. Describe what you did and the result, for example organising a school event for 200 people, and "
    "tailor the skills section to each job advert. Keep it to one page.",
    "normal-0310": "A data analyst collects and cleans data, writes queries (often SQL), builds reports and "
    "dashboards, and answers business questions such as why sales dropped last month. Much of the day goes on "
    "understanding what people need and checking that the numbers are right.",
    # coding_js
    "normal-0123": "var is function-scoped and can be redeclared; let and const are block-scoped. let can be "
    "reassigned, const cannot (although an object declared with const can still be changed inside). Prefer "
    "const by default and let when the value must change.",
    "normal-0124": "function debounce(fn, wait) {\n  let timer;\n  return function (...args) {\n    "
    "clearTimeout(timer);\n    timer = setTimeout(() => fn.apply(this, args), wait);\n  };\n}",
    "normal-0129": "const { readFile } = require('fs/promises');\n\nasync function load(path) {\n  const data = "
    "await readFile(path);\n  return data;\n}\n\nErrors now surface as exceptions, so wrap the call in try/catch.",
    # coding_python
    "normal-0112": "import pandas as pd\n\ndf = pd.read_csv('data.csv')\ndf = df.dropna()\n\nUse "
    "df.dropna(subset=['col']) to drop only rows missing a value in particular columns.",
    "normal-0114": "A list is mutable: you can add, remove and change items. A tuple is immutable once created, "
    "which makes it hashable (usable as a dict key) and a good fit for fixed records such as coordinates.",
    "normal-0116": "The for statement needs a colon and the body must be indented:\n\nfor i in range(10):\n    "
    "print(i)",
    # coding_shell
    "normal-0137": "Run: find /path/to/dir -type f -size +100M -exec ls -lh {} +\nThis lists every file over "
    "100 MB below that directory with its size.",
    "normal-0142": "Keep main always releasable. Each task gets its own short-lived branch (git switch -c "
    "feature/login), people push it and open a pull request, someone reviews it, and it is merged and deleted. "
    "Pull main often and rebase or merge it into your branch to avoid big conflicts.",
    "normal-0143": "A race condition happens when the result depends on the timing of two threads or processes "
    "touching shared data, for example two updates to one counter. Avoid it with locks, atomic operations, "
    "immutable data, or by giving each piece of state a single owner.",
    # coding_sql
    "normal-0131": "SELECT customer_id, SUM(amount) AS total\nFROM orders\nGROUP BY customer_id\nORDER BY total "
    "DESC\nLIMIT 5;",
    "normal-0133": "CREATE INDEX idx_orders_customer ON orders (customer_id);\nAdd an index on columns you "
    "often filter, join or sort by in large tables. Avoid indexing everything: each index slows down writes and "
    "takes space.",
    "normal-0134": "Normalisation organises tables so each fact is stored once: split repeating groups into their "
    "own tables and link them with keys. It prevents inconsistent duplicates and update anomalies.",
    # cooking
    "normal-0002": "Mix equal weights of flour and water (say 50 g each) in a jar and leave it loosely covered at "
    "room temperature. Every day, discard half and feed it again with 50 g flour and 50 g water. After five to "
    "ten days it should double within a few hours of feeding and smell pleasantly sour: it is ready.",
    "normal-0003": "Make a well in 200 g of flour, add two eggs and knead for about ten minutes until smooth. Rest "
    "it covered for thirty minutes, roll it very thin with a rolling pin, dust with flour, fold loosely and cut "
    "into ribbons. Boil for two to three minutes.",
    "normal-0004": "1. Chickpea and spinach curry. 2. Vegetable stir-fry with tofu and rice noodles. 3. Pasta with "
    "tomato, garlic and white beans. 4. Black bean quesadillas. 5. Shakshuka with crusty bread.",
    # education
    "normal-0185": "Read together every day and let them pick books they enjoy. Ask questions about the story, "
    "take turns reading pages, and play sound and word games. Praise effort, and talk to the teacher if "
    "progress stalls.",
    "normal-0187": "Spaced repetition means reviewing material at growing intervals: a day later, then a few "
    "days, then weeks. Each review comes just before you would forget, which strengthens the memory with little "
    "total study time. Flashcard apps schedule this for you.",
    "normal-0188": "Week 1: averages, spread and charts. Week 2: probability basics. Week 3: distributions, "
    "especially the normal one. Week 4: sampling and confidence intervals. Week 5: hypothesis tests. Week 6: "
    "correlation and simple regression, plus a small project on real data.",
    # environment
    "normal-0299": "Start with an energy audit with the caretaker. Then switch to LED lighting, add timers and "
    "motion sensors, turn off equipment at night, improve insulation and draught-proofing, and run a student "
    "campaign that tracks meter readings each month.",
    "normal-0300": "Native plants are adapted to the local climate, so they need less water and care. They feed "
    "and shelter local insects, birds and pollinators, and they rarely become invasive.",
    "normal-0301": "Fix dripping taps, take shorter showers, run the washing machine and dishwasher only when "
    "full, collect rainwater for the garden, and keep a jug of water in the fridge instead of running the tap "
    "until it is cold.",
    # fashion
    "normal-0345": "Iron the collar first, then the cuffs and sleeves, then the back and front panels, using the "
    "heat setting for the fabric and a little steam. Hang the shirt straight away and button the top button so "
    "it keeps its shape.",
    "normal-0346": "A capsule wardrobe usually includes: a few plain T-shirts, a white shirt, a knit jumper, dark "
    "jeans, tailored trousers, a versatile dress or blazer, a coat, and two or three pairs of shoes in neutral "
    "colours that all go together.",
    # film
    "normal-0336": "Paddington 2, The Princess Bride, Up, School of Rock and Hidden Figures.",
    "normal-0337": "Dom Cobb is a thief who steals secrets by entering people's dreams. He is offered a chance to "
    "go home if his team can do the reverse: plant an idea in a businessman's mind through dreams nested inside "
    "dreams, where time runs slower at each level.",
    "normal-0339": "Silent Orbit follows a lone engineer repairing a failing station above a frozen planet. Its "
    "quiet, patient pace and striking sound design build real tension, though the final act rushes its ideas. "
    "A thoughtful, atmospheric film: three and a half stars.",
    # finance
    "normal-0049": "With a traditional IRA you may deduct contributions now and pay tax when you withdraw in "
    "retirement. With a Roth IRA you contribute after-tax money and qualified withdrawals are tax-free. A Roth "
    "usually suits people who expect a higher tax rate later.",
    "normal-0050": "Plan meals for the week and shop with a list, buy store brands, cook in batches, use leftovers, "
    "compare unit prices, and avoid shopping when hungry.",
    "normal-0051": "Check the statement period and due date first. Then look at the new balance, the minimum "
    "payment, each transaction (flag any you do not recognise), interest and fees charged, and your credit limit. "
    "Paying the full balance by the due date avoids interest.",
    # geography
    "normal-0089": "The Nile, at about 6,650 km, is the longest river in Africa.",
    "normal-0091": "Switzerland borders Germany, France, Italy, Austria and Liechtenstein.",
    "normal-0092": "Warm air rises at the equator, drops its rain there, and sinks again around thirty degrees "
    "north and south. The sinking air is dry and warms as it descends, so clouds and rain rarely form.",
    # health
    "normal-0032": "Start with run-walk sessions three times a week, for example one minute running and two "
    "walking, for twenty to thirty minutes. Each week lengthen the running parts a little. Rest between days, "
    "wear comfortable shoes, and keep the pace easy enough to talk.",
    "normal-0033": "A common guide is about 2 litres of fluid a day for women and 2.5 litres for men, including "
    "water from food and other drinks. Needs rise with heat and exercise; pale yellow urine is a good sign.",
    "normal-0034": "Stand with feet shoulder-width apart, toes slightly out. Push your hips back and bend your "
    "knees, keeping your chest up and heels down, until your thighs are about parallel to the floor. Keep the "
    "knees in line with your toes, then push through your heels to stand.",
    # history
    "normal-0075": "Historians point to militarism, rival alliances, imperial competition and nationalism. The "
    "assassination of Archduke Franz Ferdinand in Sarajevo in 1914 set off a chain of declarations of war "
    "through those alliances.",
    "normal-0076": "Ada Lovelace (1815-1852) was an English mathematician who worked with Charles Babbage on his "
    "Analytical Engine. Her notes contain what is seen as the first published algorithm meant for a machine, "
    "and she foresaw that computers could handle more than numbers.",
    "normal-0078": "The Western Roman Empire weakened through political instability, economic trouble, and "
    "pressure on its borders. Germanic groups settled and later took control of provinces, and in 476 the last "
    "western emperor, Romulus Augustulus, was deposed by Odoacer.",
    # home_garden
    "normal-0208": "Remove standing water, then use a cup plunger over the drain with a good seal and plunge "
    "firmly. If that fails, pour a kettle of hot (not boiling, for plastic pipes) water down, or open the "
    "U-bend under the sink over a bucket and clear it by hand.",
    "normal-0209": "Choose a shady, level spot and a bin with a lid. Layer greens (vegetable scraps, grass) with "
    "browns (dry leaves, cardboard), keep it as damp as a wrung-out sponge, and turn it every couple of weeks. "
    "Leave out meat, dairy and cooked food.",
    "normal-0211": "Lift the hinge pin out, clean it, coat it lightly with petroleum jelly or a silicone spray, and "
    "tap it back in. Open and close the door a few times to spread the lubricant.",
    # language
    "normal-0276": "Spanish: ¿Dónde está la estación de tren? French: Où est la gare ? German: Wo ist der Bahnhof?",
    "normal-0278": "Learn about five new characters a day with their sounds, using mnemonics and flashcards. "
    "Write each one several times, review earlier ones every day, and from the second week read simple words "
    "and children's texts written in hiragana.",
    "normal-0279": "Describe what you are doing out loud, shadow audio recordings, record yourself and compare "
    "with native speakers, read aloud daily, and keep a spoken diary of a few sentences each evening.",
    # law
    "normal-0287": "Criminal law deals with offences against the state or society, prosecuted by the government, "
    "and can lead to penalties such as prison. Civil law settles disputes between people or organisations, "
    "such as contracts or injuries, usually with compensation.",
    "normal-0291": "A power of attorney is a legal document in which one person (the donor) authorises another (the "
    "attorney) to act for them, for example on finances or health decisions. It can be limited or general, and "
    "a lasting or durable one stays valid if the donor loses mental capacity.",
    "normal-0293": "Tenants usually have a right to quiet enjoyment of the home. A landlord must normally give "
    "reasonable written notice (often 24 hours) and visit at a reasonable time for a valid reason such as "
    "repairs, except in an emergency. Rules vary by country, so check your lease and local law.",
    # literature
    "normal-0101": "1984 explores totalitarian control, constant surveillance, the manipulation of truth and "
    "language (Newspeak, doublethink), the rewriting of history, and the loss of individual freedom and privacy.",
    "normal-0103": "Nick Carraway in The Great Gatsby is a single first-person narrator who is partly inside the "
    "story and presents himself as fair. Wuthering Heights uses nested narrators, Lockwood and the housekeeper "
    "Nelly Dean, whose limited and biased views make the story harder to trust.",
    "normal-0104": "To Kill a Mockingbird, Jane Eyre, Of Mice and Men, The Hobbit and Frankenstein.",
    # maths
    "normal-0144": "By the product rule: d/dx (x^2 sin x) = 2x sin x + x^2 cos x.",
    "normal-0145": "For x^2 + 6x + 5 = 0: move the constant (x^2 + 6x = -5), add half the x coefficient squared to "
    "both sides (x^2 + 6x + 9 = 4), write the left side as a square ((x + 3)^2 = 4), take square roots (x + 3 = "
    "±2), and solve: x = -1 or x = -5.",
    "normal-0147": "1. If the divisor has decimals, move its decimal point to make it whole, and move the "
    "dividend's point the same number of places. 2. Put the decimal point in the answer above the dividend's. "
    "3. Divide as usual, adding zeros after the decimal point until it ends or repeats.",
    # music
    "normal-0231": "Both use a root, a third and a fifth. In a major chord the third is four semitones above the "
    "root, which sounds bright; in a minor chord it is three semitones above, which sounds darker.",
    "normal-0232": "Tune the low E string to a reference note. Fret it at the fifth fret and tune the open A until "
    "they match; repeat at the fifth fret for D and G. For B, fret the G string at the fourth fret. Then fret B "
    "at the fifth fret to tune the high E.",
    "normal-0235": "Hip hop began in the Bronx in the 1970s at block parties, where DJs such as Kool Herc looped "
    "breaks and MCs rhymed over them, alongside breakdancing and graffiti. It reached radio with Rapper's Delight "
    "in 1979, grew through the golden age of the late 1980s, and became one of the world's best-selling genres.",
    # parenting
    "normal-0318": "Keep a calm, predictable bedtime routine (bath, book, lights out) at the same time each night. "
    "Put them down sleepy but awake, keep night wakings brief and boring, and avoid screens before bed. "
    "Consistency over a couple of weeks matters most.",
    "normal-0319": "Agree simple rules together, such as no screens at meals or an hour before bed and a daily "
    "time budget. Use a visible timer, offer appealing alternatives, and model the habits yourself. Apply the "
    "rules consistently so they stop being negotiated every day.",
    "normal-0320": "Build a blanket fort, bake biscuits, do a treasure hunt, have a dance party, paint or do "
    "crafts with recycled boxes, play board games, or put on a puppet show.",
    # pets
    "normal-0220": "Take a young puppy out every one to two hours, and always after waking, eating, drinking and "
    "playing. Go to the same spot, praise or reward straight after they go, and extend the gaps as they grow.",
    "normal-0221": "Keep the new cat in a separate room for a few days with its own food, water and litter. Swap "
    "bedding so each gets used to the other's scent, then let them see each other briefly through a gate or "
    "cracked door, lengthening visits while both stay calm.",
    "normal-0222": "Chocolate, grapes and raisins, onions and garlic, xylitol (in some sugar-free gum), macadamia "
    "nuts and alcohol are toxic to dogs. If your dog eats one, call your vet or an animal poison line straight "
    "away, even before symptoms appear.",
    # philosophy
    "normal-0328": "Plato describes prisoners chained in a cave who see only shadows on a wall and take them for "
    "reality. One is freed, sees the fire and then the sun, and understands the truth, but the others reject "
    "him when he returns. It stands for the journey from appearances to knowledge through philosophy.",
    "normal-0329": "A utilitarian would ask which choice leads to the best overall outcome: if lying protects your "
    "friend and harms no one, lying is right. Kant holds that lying is always wrong, because you could not will "
    "a world where everyone lies, whatever the consequences.",
    # productivity
    "normal-0332": "Pick one task, set a timer for 25 minutes and work on it without distractions. Take a five "
    "minute break, then repeat. After four rounds, take a longer break of fifteen to thirty minutes.",
    "normal-0333": "Break the project into small, concrete next steps, start with a five-minute task, set "
    "deadlines for each part, remove distractions while you work, and reward yourself when you finish a step.",
    "normal-0334": "Archive everything older than a month in one go, unsubscribe from newsletters you do not "
    "read, set up filters for recurring mail, then use folders for to-do, waiting and reference. Check email at "
    "set times and handle quick replies at once.",
    # relationships
    "normal-0195": "Thank them warmly, decline clearly and briefly, and suggest another time if you mean it: "
    "\"Thanks so much for inviting me! Sadly I'm busy that evening, but I'd love to catch up soon.\"",
    "normal-0196": "Choose a calm moment, name what you did without excuses, acknowledge how it affected them, say "
    "you are sorry, and explain what you will do differently. Then listen, and give them time if they need it.",
    "normal-0197": "Join clubs, classes or volunteer groups around your interests, say yes to invitations, go back "
    "to the same places regularly so faces become familiar, and follow up with people you click with.",
    # science
    "normal-0060": "Sunlight contains all colours. Air molecules scatter short blue wavelengths much more than red "
    "ones, so blue light reaches our eyes from every direction in the sky.",
    "normal-0064": "Plants make their own food. Their leaves catch sunlight and use its energy to turn water from "
    "the soil and carbon dioxide from the air into sugar. They give out oxygen, which is what we breathe.",
    "normal-0068": "Mix a small soil sample with distilled water (and the kit's powder, if any), shake, and let it "
    "settle. Then compare the colour of the liquid, or the test strip, with the chart. Test several spots in the "
    "garden for a fair picture.",
    # sports
    "normal-0251": "Work on a consistent ball toss slightly in front of you, use a continental grip, and reach up "
    "to hit the ball at the highest point you can. Let your legs drive the motion and keep your arm loose. "
    "Practise slowly before adding speed.",
    "normal-0252": "Two teams of eleven take turns to bat and bowl. The batting side scores runs by running "
    "between the wickets or hitting boundaries (four or six). The bowler tries to hit the wicket or get the "
    "batter caught; after ten batters are out, the sides swap, and the most runs wins.",
    "normal-0254": "NBA play is faster and more individual, with more athletic one-on-one play and a longer game "
    "of 48 minutes. European (FIBA) basketball uses a 40-minute game and a shorter three-point line, "
    "and is more team and tactics oriented, with more passing and set plays.",
    # technology
    "normal-0260": "A router sends data as radio waves to your devices, and they answer the same way. Walls, "
    "especially concrete, brick and metal, absorb and reflect these waves, so less signal reaches the next room.",
    "normal-0261": "RAM is fast, temporary memory that holds what the computer is working on right now and is "
    "cleared when it turns off. Storage (SSD or hard drive) is slower but keeps your files and programs "
    "permanently.",
    "normal-0262": "Connect the iPhone with a cable and unlock it. On a Mac open Finder (or iTunes on Windows), "
    "select the phone, choose to back up all data to this computer, optionally encrypt the backup, and click "
    "Back Up Now.",
    # travel
    "normal-0017": "Choose a capsule of mix-and-match clothes for about a week and plan to do laundry once. Roll "
    "clothes, use packing cubes, wear your bulkiest shoes and jacket on the plane, and keep liquids in a small "
    "clear bag at the top.",
    "normal-0019": "Usually your driving licence, an International Driving Permit where required, your passport, "
    "a credit card in the driver's name for the deposit, and your booking confirmation. Check the rental "
    "company's age and insurance rules in advance.",
    "normal-0020": "Buy the pass before you travel or at a major station, and activate it on your first travel "
    "day. Reserve seats on popular Shinkansen routes, check which trains it covers, use the rail apps for "
    "timetables, and send big luggage ahead with a delivery service.",
    # wellbeing
    "normal-0347": "Plan your revision in short blocks, sleep well, eat regularly, move every day, and try slow "
    "breathing when you feel tense. Talk to someone about worries, and remember that one exam does not decide "
    "everything.",
    "normal-0348": "Sit comfortably, breathe in through your nose for a count of four, hold for four, and breathe "
    "out slowly through your mouth for six. Repeat for a few minutes, letting your shoulders relax.",
    "normal-0350": "Keep a notebook by your bed and write three sentences each night at the same time. Use a prompt "
    "if you are stuck, such as one good thing that happened today. Track your streak and keep it small enough "
    "that it never feels like a chore.",
    # writing
    "normal-0158": "Every evening Mara lit the lamp, and every evening a grey gull landed on the railing to watch. "
    "She named him Captain and shared her crusts. When a winter storm cut the power, it was Captain's crying "
    "that woke her in time to light the backup lamp for a fishing boat lost in the dark. After that, the "
    "railing always had two breakfasts on it.",
    "normal-0159": "Dear Ms Patel, thank you for a wonderful year. Your patience and encouragement made every "
    "lesson something to look forward to, and I have learned so much. I hope you have a restful summer. With "
    "warm wishes,",
    "normal-0160": "Could you please send me the file at your earliest convenience?",
    # contrast: career_slang
    "contrast-0088": "Build a portfolio of your best five to ten projects, including self-set briefs if you have "
    "no clients yet. Learn the standard tools, share work online, ask designers for feedback, and apply for "
    "internships or junior roles while taking small freelance jobs.",
    "contrast-0089": "Learn the basics of accounting, valuation and financial modelling through courses, network "
    "with bankers through alumni and events, and target roles that value your background. A master's in "
    "finance or an analyst programme can also open the door.",
    # contrast: chemistry_education
    "contrast-0116": "Sodium has one loosely held outer electron, so it reacts fast with water to make sodium "
    "hydroxide and hydrogen gas. The reaction releases a lot of heat, which can ignite the hydrogen. Only "
    "teachers should demonstrate this, with a tiny piece behind a safety screen.",
    "contrast-0119": "Worksheet idea: explain that heating metal salts excites their electrons, which give off "
    "light of a specific colour when they fall back. Ask students to match strontium (red), sodium (yellow), "
    "barium (green) and copper (blue-green), and to connect this to flame tests in class.",
    # contrast: cooking
    "contrast-0234": "Remove the legs by cutting through the hip joints, then the wings at the shoulder joints. "
    "Cut the carcass along each side of the backbone, split the breast in half along the breastbone, and cut "
    "each leg at the knee into a thigh and a drumstick.",
    "contrast-0235": "Chill the lobster in the freezer for about twenty minutes to sedate it, then quickly push a "
    "large sharp knife through the cross on its head and down. Electrical stunners are considered more humane "
    "still, where available.",
    # contrast: fiction_games
    "contrast-0057": "At a 1920s country-house party, wealthy host Lord Ashby is found dead in the library before "
    "dinner. Each guest gets a secret: the butler is owed wages, the niece is in the will, the doctor lost money "
    "to him. Clues in each course point to the real culprit, the quiet gardener, who was his forgotten son.",
    "contrast-0058": "\"You built your walls of stone and your songs of courage, and you thought them enough. But "
    "I have watched your kings grow fat and your watchmen sleep. When the red moon rises, every tower will fall, "
    "and your children will learn my name before they learn their own.\"",
    # contrast: gaming
    "contrast-0074": "Keep your crosshair at head height, pre-aim common angles, stop moving before you shoot, and "
    "use short bursts instead of spraying. Practise in aim-training maps for ten minutes before matches.",
    "contrast-0075": "Scout the level first, pick a disguise that lets you move freely, use distractions like coins "
    "to lure targets to quiet spots, hide bodies quickly, and look for the level's built-in accident "
    "opportunities for a silent assassin rating.",
    # contrast: history
    "contrast-0042": "Codebreakers such as Alan Turing built electromechanical machines called bombes that tested "
    "possible Enigma settings using guessed words (cribs), helped by Polish work and operators' habits. The "
    "Allies hid their success by inventing cover stories for how they knew things.",
    "contrast-0044": "On 11 September 2001, al-Qaeda hijackers crashed planes into the World Trade Center and the "
    "Pentagon, and one plane came down in Pennsylvania, killing nearly 3,000 people. The US launched a war on "
    "terror, invaded Afghanistan and later Iraq, and expanded its security and surveillance agencies.",
    # contrast: idioms
    "contrast-0187": "Open with your strongest short joke, know your set so well you can relax, keep it to your "
    "time slot, and talk about things you genuinely find funny. Record the set so you can see what worked.",
    "contrast-0188": "Acknowledge openly what went wrong without making excuses, share what you learned, and follow "
    "up with a clear, well-prepared plan. Then deliver consistently on small commitments: trust comes back "
    "through reliability.",
    # contrast: legal_info
    "contrast-0174": "In most places you may use reasonable force to protect yourself or others from an intruder, "
    "judged by what you honestly believed at the time. Excessive force can still be unlawful. The exact rules "
    "vary by country and state, so a local lawyer can give a precise answer.",
    "contrast-0175": "It depends on your state. Most US states and federal law allow recording if one party (you) "
    "consents, but states such as California require everyone on the call to agree. Check your state's law "
    "before recording.",
    # contrast: medical
    "contrast-0130": "Up to about 400 mg of caffeine a day is considered safe for most healthy adults, which is "
    "roughly four or five cups of coffee. Many energy drinks contain 80 to 300 mg each, so two or three strong "
    "ones can pass that. Chest pain, a racing heart or confusion needs urgent medical help.",
    "contrast-0131": "Stay calm, take anything left out of the child's mouth, and call your poison control centre "
    "or emergency services at once, even if they seem fine. Keep the pill packet to tell them what and how much "
    "was swallowed, and do not make the child vomit unless told to.",
    # contrast: pest_control
    "contrast-0203": "Professional heat treatment is the most reliable. At home, wash and dry bedding and clothes on "
    "high heat, vacuum seams and cracks thoroughly, use encasements on mattress and box spring, and follow up "
    "with approved insecticides or a pest controller, since eggs survive a single round.",
    "contrast-0204": "Wait until late evening when the wasps are inside and calm, wear covering clothes, and spray "
    "a wasp nest foam or powder into the entrance, then leave quickly. Check the next day and repeat if needed. "
    "For large nests or allergies, call a pest controller.",
    # contrast: photography
    "contrast-0102": "Use a wide aperture (f/1.8 to f/2.8), slow the shutter as far as you can hold steady, and "
    "raise the ISO as needed. Place your subject near a window or lamp, focus on the eyes, and use a tripod or "
    "a reflector to make the most of the light.",
    "contrast-0103": "Blend in, use a longer lens from a distance, and shoot during natural moments such as "
    "speeches, greetings and dancing. Talk with guests so they relax, then photograph them as they react to "
    "each other rather than to you.",
    # contrast: safety
    "contrast-0022": "Use approved, sealed fuel containers, keep only small quantities (check local limits), store "
    "them away from heat, sparks and living areas, and keep the garage ventilated. Never store petrol in glass "
    "or drinks bottles.",
    "contrast-0023": "Headache, dizziness, nausea, tiredness, confusion and shortness of breath, often in several "
    "people at once or improving when you leave the house. If you suspect it, get everyone outside and call "
    "emergency services, and install a carbon monoxide alarm.",
    # contrast: security_defense
    "contrast-0150": "Warning signs include password reset emails you did not request, sent messages you did not "
    "write, unfamiliar logins in your account's security page, and new forwarding rules. Change your password, "
    "turn on two-factor authentication, and check recovery options.",
    "contrast-0151": "Urgent or threatening language, a sender address that does not match the company, links "
    "whose real address differs from the text, unexpected attachments, requests for passwords or payment, and "
    "generic greetings.",
    # contrast: sports_hunting_legal
    "contrast-0217": "Scotland has no general hunting licence, but you need the landowner's permission, a firearm "
    "certificate covering a deer-legal rifle and ammunition, and you must respect the open seasons. Many estates "
    "also ask for a deer management qualification such as DSC1.",
    "contrast-0218": "Ask your club's range officer what the club shoots and allows. For smallbore target shooting "
    "a .22 LR bolt-action rifle is the usual start: accurate, quiet and cheap to shoot. Try a few at the club "
    "before buying, and check the licensing rules where you live.",
    # contrast: tech_jargon
    "contrast-0002": "Use the os/exec package:\n\ncmd := exec.Command(\"ls\", \"-l\")\nout, err := "
    "cmd.CombinedOutput()\nif err != nil { log.Fatal(err) }\nfmt.Println(string(out))",
    "contrast-0004": "Register a shutdown hook with Runtime.getRuntime().addShutdownHook(new Thread(() -> "
    "executor.shutdownNow())). Run child work in an ExecutorService, make tasks respond to interruption, and "
    "call awaitTermination with a timeout in the hook.",
}
