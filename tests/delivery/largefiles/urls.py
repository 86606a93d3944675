from __future__ import annotations

from django.urls import path

from delivery.files import download

urlpatterns = [path("files/<str:token>", download)]
