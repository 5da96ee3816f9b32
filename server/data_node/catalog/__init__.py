"""The dataset catalog: configured and registered datasets, opened as data_tools views."""
