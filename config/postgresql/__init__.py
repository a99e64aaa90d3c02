"""Django's PostgreSQL backend, answering fast while the database is down (see ``base``)."""
