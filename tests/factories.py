from __future__ import annotations

import factory

from tenants import crypto
from tenants.models import SmtpAccount, Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    id = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda t: f"Tenant {t.id}")


class SmtpAccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SmtpAccount

    tenant = factory.SubFactory(TenantFactory)
    external_id = factory.Sequence(lambda n: f"smtp-{n}")
    host = "127.0.0.1"
    port = 2525
    user = "mailer"
    password_encrypted = factory.LazyFunction(lambda: crypto.encrypt("smtp-password"))
    security = "none"
    is_default = True
