from __future__ import annotations

from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

from bounces import api as bounces_api
from delivery import api as delivery_api
from delivery import files as delivery_files
from mailproxy.health import HealthView, MetricsView, ReadyView
from pec import api as pec_api
from queueing import api as queueing_api
from tenants import api as tenants_api

handler400 = "mailproxy.exceptions.json_bad_request"
handler403 = "mailproxy.exceptions.json_forbidden"
handler404 = "mailproxy.exceptions.json_not_found"
handler500 = "mailproxy.exceptions.json_server_error"

# Endpoints open without a token; everything else needs X-API-Token (tests walk this list).
# `stored-file` is a signed, expiring link: the token is the capability.
PUBLIC_URL_NAMES = frozenset({"health", "ready", "openapi", "docs", "stored-file"})

urlpatterns = [
    path("health", HealthView.as_view(), name="health"),
    path("ready", ReadyView.as_view(), name="ready"),
    # Admin only, or public with GMP_METRICS_PUBLIC=true (the view decides, at each request).
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("openapi.json", SpectacularJSONAPIView.as_view(authentication_classes=[], permission_classes=[]),
         name="openapi"),
    path("docs", SpectacularSwaggerView.as_view(url_name="openapi", authentication_classes=[],
                                                permission_classes=[]), name="docs"),
    path("commands/add-messages", queueing_api.AddMessagesView.as_view(), name="add-messages"),
    path("commands/delete-messages", queueing_api.DeleteMessagesView.as_view(), name="delete-messages"),
    path("commands/cleanup-messages", queueing_api.CleanupMessagesView.as_view(), name="cleanup-messages"),
    path("commands/suspend", queueing_api.SuspendView.as_view(), name="suspend"),
    path("commands/activate", queueing_api.ActivateView.as_view(), name="activate"),
    path("commands/run-now", queueing_api.RunNowView.as_view(), name="run-now"),
    path("messages", queueing_api.MessageListView.as_view(), name="messages"),
    # Before the message detail: its <path:> would take ".../receipts/1" as part of an id.
    path("messages/<path:message_id>/receipts/<int:n>", pec_api.ReceiptDownloadView.as_view(), name="pec-receipt"),
    path("messages/<path:message_id>/receipts", pec_api.ReceiptListView.as_view(), name="pec-receipts"),
    path("messages/<path:message_id>", queueing_api.MessageDetailView.as_view(), name="message"),
    path("account", queueing_api.AccountSaveView.as_view(), name="account-save"),
    path("accounts", queueing_api.AccountListView.as_view(), name="accounts"),
    path("account/<str:account_id>", queueing_api.AccountDetailView.as_view(), name="account"),
    path("tenant", tenants_api.TenantSaveView.as_view(), name="tenant-save"),
    path("tenants", tenants_api.TenantListView.as_view(), name="tenants"),
    path("tenants/sync-status", delivery_api.SyncStatusView.as_view(), name="sync-status"),
    path("tenant/<str:tenant_id>", tenants_api.TenantDetailView.as_view(), name="tenant"),
    path("tenant/<str:tenant_id>/api-keys", tenants_api.ApiKeyListView.as_view(), name="api-keys"),
    path("tenant/<str:tenant_id>/api-keys/<str:prefix>", tenants_api.ApiKeyDetailView.as_view(), name="api-key"),
    path("tenant/<str:tenant_id>/api-keys/<str:prefix>/rotate", tenants_api.ApiKeyRotateView.as_view(),
         name="api-key-rotate"),
    path("suppressions", bounces_api.SuppressionListView.as_view(), name="suppressions"),
    path("suppressions/<str:address>", bounces_api.SuppressionDetailView.as_view(), name="suppression"),
    path("files/<str:token>", delivery_files.download, name="stored-file"),
    path("admin/", admin.site.urls),
]
