"""Admin console: tenants and API keys. Secret columns are never shown or edited as text."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants import crypto, services
from tenants.models import ApiKey, SuspendedBatch, Tenant


class TenantForm(forms.ModelForm):
    """Secrets are write-only: an empty field keeps the stored value."""

    client_auth_secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                                         help_text="bearer token or basic password; empty keeps the current one")
    signing_secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                                     help_text="empty keeps the current one")

    class Meta:
        model = Tenant
        # Listed, not excluded: a secret column added later stays out of the form by default.
        fields = ("id", "name", "active", "suspended", "client_base_url", "client_sync_path",
                  "client_attachment_path", "client_auth_method", "client_auth_user", "rate_limits",
                  "large_file_config", "retention_seconds", "bounce")

    def save(self, commit: bool = True) -> Tenant:
        tenant = super().save(commit=False)
        if self.cleaned_data.get("client_auth_secret"):
            tenant.client_auth_secret_encrypted = crypto.encrypt(self.cleaned_data["client_auth_secret"])
        if self.cleaned_data.get("signing_secret"):
            tenant.signing_secret_encrypted = crypto.encrypt(self.cleaned_data["signing_secret"])
        if commit:
            tenant.save()
        return tenant


class SuspendedBatchInline(admin.TabularInline):
    model = SuspendedBatch
    extra = 0


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ("id", "name", "active", "suspended", "client_base_url", "sync_last_at", "sync_last_error")
    list_filter = ("active", "suspended")
    search_fields = ("id", "name")
    readonly_fields = ("created_at", "updated_at", "sync_last_at", "sync_last_call_at", "sync_dnd_until",
                       "sync_retry_at", "sync_backoff_seconds", "sync_failing_since", "sync_last_error",
                       "sync_expect_more", "sync_ring_until", "sync_lease_until")
    inlines = (SuspendedBatchInline,)

    def get_readonly_fields(self, request: HttpRequest, obj: Tenant | None = None) -> Any:
        return (*self.readonly_fields, "id") if obj is not None else self.readonly_fields


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are made through the API; rotating one here shows the new raw key once."""

    list_display = ("prefix", "tenant", "label", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = ("tenant",)
    search_fields = ("prefix", "label", "tenant__id")
    fields = ("prefix", "tenant", "label", "created_at", "expires_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ("revoke", "rotate")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a key's hash cannot be typed in: keys come from the API or the actions

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.revoke_api_key(key=key)
        self.message_user(request, f"{queryset.count()} key(s) revoked.")

    @admin.action(description="Rotate the selected keys (the new key is shown once)")
    def rotate(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset.filter(revoked_at__isnull=True):
            issued = services.rotate_api_key(key=key)
            self.message_user(request, f"New key for {issued.key.tenant_id or 'admin'} (copy it now, it is "
                                       f"not shown again): {issued.raw}", level=messages.WARNING)
