"""Local development helpers: start throwaway services and run the whole stack with one command."""
