"""Element Web's SDK (matrix-js-sdk) as a test participant: see element.py and README.md."""
