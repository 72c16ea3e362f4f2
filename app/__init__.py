"""Assembly and HTTP plumbing: the app factory, the command line, settings, app keys,
middlewares, problem+json, the OpenAPI document and the docs page."""
