"""The response shapes, as typed structs: what the renderers encode and what the OpenAPI schemas are made from."""
