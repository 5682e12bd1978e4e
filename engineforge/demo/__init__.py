"""Demo: a customer-support intent dataset and a fine-tune of the packaged MiniLM."""
