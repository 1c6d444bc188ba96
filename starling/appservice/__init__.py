"""Application services (bridges and bots): registration files, the registry the request
guard asks about ``as_token``s and namespaces, queries to the services, and the
transaction sender (spec: application-service-api)."""
