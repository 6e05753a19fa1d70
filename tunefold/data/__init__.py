"""Reading instruction data and the one record schema."""
