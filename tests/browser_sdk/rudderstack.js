// Bundled by tests/sdk_bundles.py (npx esbuild rudderstack.js --bundle --format=iife) into one
// browser script: RudderStack's JavaScript SDK from npm, its "bundled" build (every plugin
// inside, nothing loaded from RudderStack's CDN), exposed as window.RudderStackSDK, which the
// page's copy of the docs/web.md snippet uses in place of its `import`.
import * as sdk from "@rudderstack/analytics-js/bundled";

window.RudderStackSDK = sdk;
