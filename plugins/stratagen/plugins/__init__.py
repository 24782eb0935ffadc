"""Built-in stratagen plugins, registered through the `stratagen` entry-point group."""
