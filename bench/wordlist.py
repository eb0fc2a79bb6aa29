"""A fixed word list for generated benchmark text: common English words of varied length.

Frequent words tokenize to one WordPiece each and rarer, longer ones to several, so generated
sentences land near the 1.2-1.4 tokens per word of ordinary English prose.
"""

_TEXT = """
the of and to in is was for that on with as by at from his her they this which be or an are
had not but have were one all their there been has when who will more no if out so said what
up its about into than them can only other new some time could these two may then do first any
my now such like our over man me even most made after also did many before must through back
years where much your way well down should because each just those people how too little state
good very make world still own see men work long get here between both life being under never
day same another know while last might us great old year off come since against go came right
used take three states himself few house use during without again place american around however
home small found thought went say part once general high upon school every united left number
course war until always away something fact though water less public put think almost hand
enough far took head yet government system better set told nothing night end why called didn
eyes find going look asked later knew point next program city business give group toward young
days let room president side social present given several order national possible rather second
face per among form important often things looked early white case john become large big need
four within felt along children saw best church ever least power development light thought
family interest want members mind country area others done turned although open god service
problem certain kind different thing began door help means sense whole matter perhaps itself york
times human law line above name example action company hands local show whether five history gave
today either act feet across taken past quite anything seen having death experience body word half
really week field car words already themselves information tell together college shall money period
held keep sure free seems real behind cannot miss political air question office making brought
whose special heard major problems ago became federal available known result street economic boy
research analysis committee budget library university hospital agreement temperature measurement
neural embedding retrieval semantic quantization throughput latency deployment infrastructure
photosynthesis biodiversity archaeological constitutional pharmaceutical telecommunications
"""
WORDS: tuple[str, ...] = tuple(_TEXT.split())
