"""The API's routers: each route translates HTTP to calls of plain functions and back."""
