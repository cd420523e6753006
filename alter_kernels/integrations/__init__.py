"""Integrations of the unlearning engine with other training frameworks (app layer)."""
