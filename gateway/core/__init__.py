"""What every layer shares: the error table, the datatype table, the request and response records."""
