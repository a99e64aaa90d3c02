"""Static files storage for production: hashed names, compressed copies, rewritten module imports."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    """WhiteNoise's storage, with ``import ... from "./x.js"`` rewritten to hashed names too.

    The console is plain ES modules; without the rewrite a cached page could
    load a new ``app.js`` beside an old ``client.js``.
    """

    support_js_module_import_aggregation = True
