// Bundled by tests/sdk_bundles.py (npx esbuild segment.js --bundle --format=iife) into one
// browser script: Segment's analytics-next from npm, exposed as window.SegmentSDK, which the
// page's copy of the docs/web.md snippet uses in place of its `import`.
import * as sdk from "@segment/analytics-next";

window.SegmentSDK = sdk;
