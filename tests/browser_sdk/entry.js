// Bundled by tests/sdk_bundles.py (npx esbuild entry.js --bundle --format=iife) into one
// browser script: Snowplow's browser tracker from npm, its functions exposed as window.snowplow.
import * as tracker from "@snowplow/browser-tracker";

window.snowplow = tracker;
