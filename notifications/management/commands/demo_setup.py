"""Create (or reset) the demo user and print how to log in."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create or reset the demo user (a superuser, so the admin works too) and print its login."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo-password")
        parser.add_argument("--url", default="http://127.0.0.1:8000/", help="The URL to print.")

    def handle(self, *args: Any, username: str, password: str, url: str, **options: Any) -> None:
        user_model = get_user_model()
        user, created = user_model._default_manager.get_or_create(username=username)
        user.is_active = user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(
            f"{'Created' if created else 'Reset'} demo user.\n"
            f"  Console: {url}  (sign in, start an agent, watch it work live)\n"
            f"  Admin:   {url}admin/\n"
            f"  Login:   {username} / {password}\n"
        )
