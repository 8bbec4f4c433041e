"""Close-up localisation (FTFY): patch groups for training and testing, and the search of a
close-up in a wide image across scale factors."""
