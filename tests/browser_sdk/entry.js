// Bundled by tests/test_browser_sdk.py (npx esbuild entry.js --bundle --format=iife) into one
// browser script: Snowplow's browser tracker from npm, its functions exposed as window.snowplow.
import * as tracker from "@snowplow/browser-tracker";

window.snowplow = tracker;
