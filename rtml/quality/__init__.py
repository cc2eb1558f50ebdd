"""quality part of the data flow."""
