"""serving part of the data flow."""
