"""model part of the data flow."""
