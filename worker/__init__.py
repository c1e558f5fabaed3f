"""Build workers: claim leased units of datastore builds from the database and run them."""
