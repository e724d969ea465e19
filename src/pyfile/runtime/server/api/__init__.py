"""The wire formats: each module turns its API's bodies into tasks and formats the results."""
