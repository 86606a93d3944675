"""Admin console: SMTP accounts (password write-only, a connection test) and offloaded files."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from delivery.models import StoredFile
from delivery.probe import probe_account
from tenants import crypto
from tenants.models import SmtpAccount


class SmtpAccountForm(forms.ModelForm):
    password = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                               help_text="write-only; empty keeps the current password")
    imap_password = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                                    help_text="write-only; empty keeps the current password")

    class Meta:
        model = SmtpAccount
        # Listed, not excluded: a secret column added later stays out of the form by default.
        fields = ("tenant", "external_id", "host", "port", "user", "security", "verify_tls", "timeout",
                  "max_connections", "connection_ttl", "batch_size", "limit_per_minute", "limit_per_hour",
                  "limit_per_day", "limit_behavior", "is_default", "is_pec", "imap_host", "imap_port", "imap_user",
                  "imap_folder", "imap_security", "imap_poll_interval")

    def save(self, commit: bool = True) -> SmtpAccount:
        account = super().save(commit=False)
        if self.cleaned_data.get("password"):
            account.password_encrypted = crypto.encrypt(self.cleaned_data["password"])
            account.account_error, account.account_error_at, account.paused_until = "", None, None
        if self.cleaned_data.get("imap_password"):
            account.imap_password_encrypted = crypto.encrypt(self.cleaned_data["imap_password"])
        if commit:
            account.save()
        return account


@admin.register(SmtpAccount)
class SmtpAccountAdmin(admin.ModelAdmin):
    form = SmtpAccountForm
    list_display = ("external_id", "tenant", "host", "port", "security", "is_default", "is_pec", "account_error",
                    "paused_until")
    list_filter = ("tenant", "security", "is_pec")
    search_fields = ("external_id", "host", "tenant__id")
    readonly_fields = ("account_error", "account_error_at", "paused_until", "unreachable_since", "backoff_seconds",
                       "created_at", "updated_at")
    actions = ("test_connection", "send_test_message")

    @admin.action(description="Test the connection (connect, authenticate, say goodbye)")
    def test_connection(self, request: HttpRequest, queryset: QuerySet[SmtpAccount]) -> None:
        for account in queryset:
            result = probe_account(account)
            self.message_user(request, f"{account}: {result}", level=messages.SUCCESS if result.ok else messages.ERROR)

    @admin.action(description="Send a test message to my own address")
    def send_test_message(self, request: HttpRequest, queryset: QuerySet[SmtpAccount]) -> None:
        recipient = getattr(request.user, "email", "")
        if not recipient:
            self.message_user(request, "Your admin user has no email address: set one to receive the test message.",
                              level=messages.ERROR)
            return
        for account in queryset:
            result = probe_account(account, send_to=recipient)
            self.message_user(request, f"{account}: test message to {recipient}: {result}",
                              level=messages.SUCCESS if result.ok else messages.ERROR)


@admin.register(StoredFile)
class StoredFileAdmin(admin.ModelAdmin):
    list_display = ("filename", "tenant", "size", "storage_url", "created_at", "expires_at")
    list_filter = ("tenant",)
    readonly_fields = ("tenant", "storage_url", "key", "filename", "size", "created_at", "expires_at")
