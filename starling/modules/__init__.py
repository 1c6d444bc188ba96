"""Python modules listed in the config (``modules:``, as Synapse): each gets a narrow
`ModuleApi` handle to register its callbacks through."""
