"""cart_course: event-sourced, auditable treatment courses for a CD19 CAR-T trial."""

__version__ = "0.1.0"
