"""The control plane's own metrics (the API's, the catalog exporter's) and its dashboards."""
