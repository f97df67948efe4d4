"""Upload the dashboards to Grafana through its HTTP API (grafana-client: the
``gpuwatch[grafana]`` extra). The token comes from the environment or a file and
is never printed."""

from __future__ import annotations

from typing import Any

from gpuwatch.dashboards import DASHBOARDS, model


def push(url: str, token: str, folder: str, client: Any = None) -> list[str]:
    """Create (or reuse) ``folder`` and import every dashboard into it, overwriting.

    Returns the uids pushed. ``client`` is a ``grafana_client.GrafanaApi`` (built
    from ``url`` and ``token`` when not given).
    """
    if client is None:
        try:
            from grafana_client.api import GrafanaApi
        except ImportError:
            raise RuntimeError("dashboards push needs grafana-client: "
                               "pip install 'gpuwatch[grafana]'") from None
        client = GrafanaApi.from_url(url, credential=token)
    existing = [f for f in client.folder.get_all_folders() if f.get("title") == folder]
    folder_uid = (existing[0]["uid"] if existing
                  else client.folder.create_folder(folder, uid="gpuwatch")["uid"])
    pushed = []
    for d in DASHBOARDS:
        client.dashboard.update_dashboard({"dashboard": model(d), "folderUid": folder_uid,
                                           "overwrite": True,
                                           "message": "gpuwatch dashboards push"})
        pushed.append(d.uid)
    return pushed
