// Playwright test of `layerlens explore` in Debian's Chromium: starts the real
// server (the release binary), clicks through the page, compares what it shows
// with the library's numbers, and opens the static export offline.
// Run by crates/layerlens-cli/tests/explore_browser.rs inside a loopback-only
// network namespace; every failure throws and exits non-zero.
//
// Environment: LAYERLENS_BIN, LAYERLENS_MODEL, LAYERLENS_INPUTS (two paths,
// ':'-separated), LAYERLENS_EXPECTED (JSON written by the Rust test),
// LAYERLENS_STATIC (the static export), LAYERLENS_NODE (the node to click),
// LAYERLENS_SHOTS (optional: a directory for screenshots).
import { chromium } from 'playwright-core';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import assert from 'node:assert/strict';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BIN = env('LAYERLENS_BIN');
const MODEL = env('LAYERLENS_MODEL');
const INPUTS = env('LAYERLENS_INPUTS').split(':');
const EXPECTED = JSON.parse(readFileSync(env('LAYERLENS_EXPECTED'), 'utf8'));
const STATIC = env('LAYERLENS_STATIC');
const NODE = env('LAYERLENS_NODE');
const SHOTS = process.env.LAYERLENS_SHOTS || '';
const log = (m) => console.log(`explore.test: ${m}`);

function startServer() {
  const args = ['explore', MODEL, ...INPUTS.flatMap((i) => ['--input', i])];
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /layerlens explorer: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
      if (m) resolve({ child, url: m[1] });
    });
    child.on('exit', (code) => reject(new Error(`layerlens explore exited (${code}) before printing its URL: ${stderr}`)));
  });
}

// A raw GET, so that `..` reaches the server as typed (fetch would normalise it).
function rawGet(url, path) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    http.get({ host: u.hostname, port: u.port, path }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

// Counts the tiles of a feature-map grid: tiles are runs of at least 30
// non-background pixels (labels are shorter), down the first column, then
// across each row found; also the pixels, as a data URL.
async function countTiles(page, selector) {
  return page.evaluate(async (sel) => {
    const img = document.querySelector(sel);
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    const bg = (x, y) => { const i = (y * c.width + x) * 4; return d[i] === 255 && d[i + 1] === 255 && d[i + 2] === 255; };
    const runs = (len, at) => {
      const found = [];
      let start = -1;
      for (let p = 0; p <= len; p++) {
        const ink = p < len && !at(p);
        if (ink && start < 0) start = p;
        if (!ink && start >= 0) { if (p - start >= 30) found.push((start + p) >> 1); start = -1; }
      }
      return found;
    };
    const rows = runs(c.height, (y) => bg(6, y));
    let tiles = 0;
    for (const y of rows) tiles += runs(c.width, (x) => bg(x, y)).length;
    return { tiles, width: c.width, height: c.height, pixels: c.toDataURL() };
  }, selector);
}

async function pixelsOf(page, selector) {
  return (await countTiles(page, selector)).pixels;
}

function checkStats(shown, expected, what) {
  for (const k of ['mean', 'std', 'min', 'max', 'zero_fraction']) {
    const v = parseFloat(shown[k]);
    const e = expected[k];
    // Both sides print an f32: they agree to its precision (2^-24 relative).
    assert.ok(Math.abs(v - e) <= 1.2e-7 * Math.abs(e), `${what}: ${k} is ${v}, the library says ${e}`);
  }
  assert.equal(parseInt(shown.dead_channels, 10), expected.dead_channels.length, `${what}: dead channels`);
}

async function statsOf(page, input) {
  const col = `.input-col[data-input="${input}"]`;
  await page.waitForSelector(`${col} td[data-stat="mean"]`);
  return page.evaluate((c) => Object.fromEntries([...document.querySelectorAll(`${c} td[data-stat]`)]
    .map((td) => [td.dataset.stat, td.dataset.value])), col);
}

async function waitCam(page, input) {
  const sel = `.input-col[data-input="${input}"] img.cam-img`;
  await page.waitForSelector(sel, { timeout: 120000 });
  await page.waitForFunction((s) => { const i = document.querySelector(s); return i.complete && i.naturalWidth > 0; }, sel, { timeout: 120000 });
  return page.textContent(`.input-col[data-input="${input}"] .cam-caption`);
}

function watch(page, label, problems) {
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(`${label} console ${m.type()}: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`${label} page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`${label} request failed: ${r.url()} ${r.failure()?.errorText}`));
}

async function main() {
  // The server refuses to listen beyond loopback unless asked.
  const refused = spawnSync(BIN, ['explore', MODEL, '--input', INPUTS[0], '--host', '0.0.0.0'], { encoding: 'utf8' });
  assert.notEqual(refused.status, 0, 'binding 0.0.0.0 without --allow-remote must fail');
  assert.match(refused.stderr, /refusing to bind 0\.0\.0\.0.*--allow-remote/);
  assert.equal(refused.stderr.trim().split('\n').length, 1, `one line: ${refused.stderr}`);
  log('non-loopback bind refused');

  const { child, url } = await startServer();
  const problems = [];
  let browser;
  try {
    log(`server at ${url}`);
    for (const path of ['/assets/../Cargo.toml', '/assets/%2e%2e/%2e%2e/Cargo.toml', '/assets/..%2fCargo.toml', '/../../etc/passwd']) {
      const r = await rawGet(url, path);
      assert.equal(r.status, 400, `${path} answered ${r.status}`);
      assert.match(r.body, /path traversal refused/);
      assert.doesNotMatch(r.body, /\[workspace\]|root:/);
    }
    assert.equal((await rawGet(url, '/assets/secret.txt')).status, 404);
    log('path traversal refused');

    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
    const page = await context.newPage();
    watch(page, 'live', problems);
    await page.goto(url);
    await page.waitForSelector('body[data-ready="true"]');
    const nodeSel = `.node[data-name="${NODE}"]`;
    await page.waitForSelector(nodeSel);
    await page.hover(nodeSel);
    const tip = await page.textContent('#tooltip');
    assert.match(tip, /op: block of \d+[\s\S]*output: \(320, 7, 7\)[\s\S]*parameters: [\d,]+[\s\S]*MACs: [\d,]+/, tip);
    await page.click(nodeSel);
    await page.waitForSelector('#node-title');
    assert.equal(await page.textContent('#node-title'), NODE);

    // The grid: the image decodes and holds one tile per selected channel.
    const grid0 = '.input-col[data-input="0"] img.grid-img';
    await page.waitForSelector(grid0);
    const t = await countTiles(page, grid0);
    assert.equal(t.tiles, EXPECTED.tiles, `grid tiles: ${t.tiles} in ${t.width}x${t.height}`);
    log(`grid of ${NODE}: ${t.tiles} tiles (${t.width}x${t.height})`);

    checkStats(await statsOf(page, 0), EXPECTED.stats[0], `${NODE} on input 0`);
    log('statistics equal the library\'s');
    const caption = await waitCam(page, 0);
    assert.ok(caption.includes('Grad-CAM++') && caption.includes(EXPECTED.class_name), `CAM caption: ${caption}`);
    assert.match(EXPECTED.class_name, /cat/);
    log(`CAM: ${caption}`);
    if (SHOTS) {
      mkdirSync(SHOTS, { recursive: true });
      await page.screenshot({ path: `${SHOTS}/explorer-node.png` });
    }

    // Channel selection re-renders the grid.
    await page.selectOption('#channels', '8');
    await page.waitForFunction(() => document.querySelector('.input-col[data-input="0"] img.grid-img')?.src.includes('channels=8'));
    assert.equal((await countTiles(page, grid0)).tiles, Math.min(8, EXPECTED.tiles));
    await page.selectOption('#channels', '16');
    await page.waitForFunction(() => document.querySelector('.input-col[data-input="0"] img.grid-img')?.src.includes('channels=16'));

    // Switching input keeps the node and updates the grid and statistics.
    const before = await pixelsOf(page, grid0);
    await page.click('.input-tab[data-index="1"]');
    const grid1 = '.input-col[data-input="1"] img.grid-img';
    await page.waitForSelector(grid1);
    assert.equal(await page.textContent('#node-title'), NODE);
    const after = await pixelsOf(page, grid1);
    assert.notEqual(after, before, 'the grid changed with the input');
    assert.equal((await countTiles(page, grid1)).tiles, EXPECTED.tiles);
    checkStats(await statsOf(page, 1), EXPECTED.stats[1], `${NODE} on input 1`);
    await waitCam(page, 1);
    log('switching input kept the node and updated grid, statistics and CAM');

    // Side by side: one column per input.
    await page.check('#side-by-side');
    await page.waitForFunction(() => document.querySelectorAll('.input-col').length === 2);
    await waitCam(page, 0);
    await waitCam(page, 1);
    if (SHOTS) await page.screenshot({ path: `${SHOTS}/explorer-side-by-side.png` });

    // A heavy CAM runs on demand with a progress indicator, and the server
    // answers other requests meanwhile (ordering, not timing: the statistics
    // arrive while the page still shows the spinner).
    await page.uncheck('#side-by-side');
    await page.waitForFunction(() => document.querySelectorAll('.input-col').length === 1);
    await page.selectOption('#cam-method', 'scorecam');
    await page.waitForSelector('.input-col[data-input="1"] .cam-status .spinner');
    const other = await (await fetch(url + 'api/stats?node=_conv_head&input=1')).json();
    assert.equal(other.node, '_conv_head');
    assert.ok(await page.$('.input-col[data-input="1"] .cam-status .spinner'), 'Score-CAM still running while other requests are answered');
    const heavy = await waitCam(page, 1);
    assert.ok(heavy.startsWith('Score-CAM over'), heavy);
    log(`while Score-CAM ran (spinner shown), /api/stats answered; then ${heavy}`);
    await page.selectOption('#cam-method', 'gradcam++');

    // Search by glob: every node of the block, and only those, is marked.
    const graph = await (await fetch(url + 'api/graph')).json();
    const glob = `${NODE}._*conv`;
    const rx = new RegExp('^' + glob.replace(/[.]/g, '\\.').replace(/\*/g, '.*') + '$');
    const inOrder = graph.nodes.map((n) => n.name).filter((n) => rx.test(n));
    const want = [...inOrder].sort();
    assert.ok(want.length >= 2, `the glob ${glob} should match convolutions: ${want}`);
    await page.fill('#search', glob);
    await page.waitForFunction((n) => document.querySelectorAll('.node.match').length === n, want.length);
    const marked = await page.$$eval('.node.match', (ns) => ns.map((n) => n.dataset.name).sort());
    assert.deepEqual(marked, want);
    assert.equal(await page.textContent('#search-count'), `${want.length} matches`);
    log(`search '${glob}' found ${marked.join(', ')}`);
    await page.press('#search', 'Enter');
    await page.waitForFunction((n) => document.querySelector('#node-title')?.textContent === n, inOrder[0]);
    if (SHOTS) await page.screenshot({ path: `${SHOTS}/explorer-search.png` });
    await page.close();

    // The static export opens from a file, offline, with the same content.
    const off = await browser.newContext({ viewport: { width: 1600, height: 1000 }, offline: true });
    const spage = await off.newPage();
    watch(spage, 'static', problems);
    const fetched = [];
    await spage.route('**/*', (route) => {
      const u = route.request().url();
      if (u.startsWith('file:') || u.startsWith('data:')) return route.continue();
      fetched.push(u);
      return route.abort();
    });
    await spage.goto('file://' + STATIC);
    await spage.waitForSelector('body[data-ready="true"]');
    await spage.click(nodeSel);
    await spage.waitForSelector(grid0);
    assert.equal((await countTiles(spage, grid0)).tiles, EXPECTED.tiles, 'static grid tiles');
    checkStats(await statsOf(spage, 0), EXPECTED.stats[0], `${NODE} in the static export`);
    const scap = await waitCam(spage, 0);
    assert.equal(scap, caption, 'the static CAM caption equals the live one');
    await spage.click('.input-tab[data-index="1"]');
    checkStats(await statsOf(spage, 1), EXPECTED.stats[1], `${NODE} on input 1 in the static export`);
    assert.deepEqual(fetched, [], 'the static export fetched nothing');
    if (SHOTS) await spage.screenshot({ path: `${SHOTS}/explorer-static.png` });
    log('static export: same grid, statistics and CAM, offline');
    assert.deepEqual(problems, [], 'no console errors, page errors or failed requests');
    log('ok');
  } finally {
    if (browser) await browser.close();
    child.kill();
  }
}

main().catch((e) => {
  console.error(`explore.test: FAILED: ${e.stack || e}`);
  process.exit(1);
});
