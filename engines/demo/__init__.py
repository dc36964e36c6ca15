"""The demo's toys (random tiny pipeline + mood grade, toy plants). Not product code: no node imports them."""
