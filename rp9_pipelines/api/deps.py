from typing import Annotated

from fastapi import Depends

from rp9_pipelines.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]
