"""Running experts locally: model resolution, llama.cpp processes and the pool that owns them."""
