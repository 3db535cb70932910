"""The central feed publisher: signed feed, admin write API, acks and compliance metrics."""
