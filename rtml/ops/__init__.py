"""ops part of the data flow."""
