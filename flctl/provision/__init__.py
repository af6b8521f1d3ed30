"""`flctl broker init`: everything a secured deployment needs, in one folder (docs/security.md).

    DIR/broker/mosquitto.conf   allow_anonymous false, password_file, acl_file, use_username_as_clientid,
                                a TLS listener on --port and a plain listener on 127.0.0.1:--plain-port
    DIR/broker/passwd           mosquitto's PBKDF2-SHA512 `$7$` lines, hashed in-process (`_passwd`)
    DIR/broker/acl              per role, keyed on the username
    DIR/broker/ca.crt, server.crt, server.key
    DIR/ca/ca.key               the CA key: keep it offline
    DIR/nodes/<node>/node.yaml, ca.crt [, <node>.crt, <node>.key with --client-certs]
    DIR/admin/flctl.yaml, ca.crt    the admin (job publisher); more admins: DIR/admin/<name>.yaml
    DIR/viewer/<name>.yaml, ca.crt  read-only flctl identities (--viewer)
    DIR/monitor/<name>/<name>.yaml, mosquitto_sub, ca.crt   monitoring ($SYS, statuses; --monitor)

Secrets (keys, passwd, node configs) are 0600, folders 0700. No secret is printed or logged.

    _deployment.py   `provision`: the arguments, then the folder, the broker config and one config per identity
    _pki.py          the CA and the certificates it issues
    _acl.py          the ACL, built from `schemas.Topics`: one block per role
    _files.py        files created with their final mode
    _passwd.py       mosquitto's password-file format (no mosquitto_passwd, no password on a command line)
    _site.py         `provision_site` (`flctl site add`): a site broker bridged to the cloud broker
    _cloud_site.py   the site's bridge user and ACL block on the cloud broker
    _site_sync.py    `sync_site` (`flctl site sync`): the bridge and the cloud block follow the site's edges
    _fleet.py        `flctl node add/rotate/remove`: one identity's files, passwd line and ACL block
    _fleet_files.py  line- and block-wise edits of passwd and acl, atomic writes, the deployment's lock
"""

from __future__ import annotations

from flctl.provision._acl import render_acl
from flctl.provision._deployment import DEFAULT_PLAIN_PORT, DEFAULT_TLS_PORT, Provisioned, provision
from flctl.provision._fleet import (
    Deployment,
    FleetChange,
    add_node,
    open_deployment,
    prepare_removal,
    remove_node,
    rotate_node,
)
from flctl.provision._fleet_files import (
    acl_block,
    acl_insert,
    acl_remove,
    deployment_lock,
    passwd_remove,
    passwd_set,
    write_atomic,
)
from flctl.provision._passwd import hash_password, render_passwd
from flctl.provision._site import QueueLimits, SiteProvisioned, bridge_topics, provision_site
from flctl.provision._site_sync import SiteSynced, sync_site

__all__ = [
    "DEFAULT_PLAIN_PORT",
    "DEFAULT_TLS_PORT",
    "Deployment",
    "FleetChange",
    "Provisioned",
    "QueueLimits",
    "SiteProvisioned",
    "SiteSynced",
    "acl_block",
    "acl_insert",
    "acl_remove",
    "add_node",
    "bridge_topics",
    "deployment_lock",
    "hash_password",
    "open_deployment",
    "passwd_remove",
    "passwd_set",
    "prepare_removal",
    "provision",
    "provision_site",
    "remove_node",
    "render_acl",
    "render_passwd",
    "rotate_node",
    "sync_site",
    "write_atomic",
]
