"""features part of the data flow."""
