"""The scheduling framework: filters, scorers, pickers and profiles, configured by YAML."""
