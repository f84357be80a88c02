// layerlens explorer: the graph (laid out by dagre), and for the selected node
// its feature maps, statistics, histogram and CAM for each input. Live pages
// ask the server's API; a static export carries the answers in
// window.LAYERLENS_STATIC and fetches nothing.
(() => {
  'use strict';
  const STATIC = window.LAYERLENS_STATIC || null;
  const SVG = 'http://www.w3.org/2000/svg';
  const state = {
    graph: null,
    nodes: new Map(),
    blocks: new Map(),
    inputs: [],
    methods: [],
    input: 0,
    sideBySide: false,
    selected: null,
    expanded: new Set(),
    matches: new Set(),
    grid: { channels: '16', norm: 'auto', cmap: 'auto' },
    method: 'gradcam++',
    view: { x: 20, y: 20, k: 1 },
    render: 0,
  };

  const $ = (sel, root = document) => root.querySelector(sel);
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  };
  const svg = (tag, attrs = {}) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  const fmtInt = (n) => Number(n).toLocaleString('en-US');
  const fmtNum = (v) => {
    const a = Math.abs(v);
    if (v === 0) return '0';
    if (a >= 1e5 || a < 1e-3) return v.toExponential(3);
    return v.toPrecision(5).replace(/\.?0+$/, '');
  };
  const shapeText = (s) => '(' + s.join(', ') + ')';
  const status = (msg) => { $('#status').textContent = msg; };

  // --- data: the API, or the static export's copy of its answers ---
  async function getJson(url) {
    const r = await fetch(url);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  const q = (params) => new URLSearchParams(params).toString();
  function exported(node, i) {
    const e = STATIC.exported[node];
    if (!e) throw new Error(`'${node}' is not in this static export (export it with --nodes)`);
    return e[i];
  }
  const api = {
    graph: () => (STATIC ? Promise.resolve(STATIC.graph) : getJson('api/graph')),
    inputs: () => (STATIC ? Promise.resolve(STATIC.inputs) : getJson('api/inputs')),
    methods: () => (STATIC ? Promise.resolve(STATIC.methods) : getJson('api/methods')),
    inputUrl: (i) => (STATIC ? STATIC.inputs[i].image : 'api/input.png?' + q({ input: i })),
    stats: async (node, i) => (STATIC ? exported(node, i).stats : getJson('api/stats?' + q({ node, input: i }))),
    gridUrl: (node, i) => (STATIC ? exported(node, i).grid
      : 'api/grid.png?' + q({ node, input: i, channels: state.grid.channels, norm: state.grid.norm, cmap: state.grid.cmap })),
    histUrl: (node, i) => (STATIC ? exported(node, i).hist : 'api/hist.png?' + q({ node, input: i })),
    cam: async (node, i, method) => {
      if (STATIC) return exported(node, i).cam;
      const c = await getJson('api/cam?' + q({ node, input: i, method }));
      c.image = 'api/cam.png?' + q({ node, input: i, method });
      return c;
    },
  };
  const isExported = (name) => !STATIC || Object.prototype.hasOwnProperty.call(STATIC.exported, name);

  // --- the graph ---
  // A node in a collapsed block is drawn as the block; the block's name
  // resolves to its output node everywhere in the API.
  function shown(name) {
    const n = state.nodes.get(name);
    return n && n.block && !state.expanded.has(n.block) ? 'block:' + n.block : name;
  }
  function info(id) {
    if (id.startsWith('block:')) {
      const b = state.blocks.get(id.slice(6));
      const out = state.nodes.get(b.output);
      return { name: b.name, op: `block of ${b.size}`, shape: out.shape, block: true, conv: out.cam_capable,
        params: state.graph.nodes.filter((n) => n.block === b.name).reduce((s, n) => s + n.params, 0),
        macs: state.graph.nodes.filter((n) => n.block === b.name).reduce((s, n) => s + n.macs, 0) };
    }
    const n = state.nodes.get(id);
    return { name: n.name, op: n.op, shape: n.shape, block: false, conv: n.cam_capable, params: n.params, macs: n.macs };
  }

  function drawGraph() {
    const g = new dagre.graphlib.Graph({ compound: true, multigraph: false });
    g.setGraph({ rankdir: 'TB', nodesep: 16, ranksep: 16, marginx: 10, marginy: 14 });
    g.setDefaultEdgeLabel(() => ({}));
    const ids = new Set();
    for (const n of state.graph.nodes) {
      const id = shown(n.name);
      if (ids.has(id)) continue;
      ids.add(id);
      const i = info(id);
      const sub = `${i.op} ${shapeText(i.shape)}`;
      const width = Math.max(i.name.length * 7.2, sub.length * 6) + 22;
      g.setNode(id, { width, height: 32 });
      if (!id.startsWith('block:') && n.block && state.expanded.has(n.block)) {
        const cluster = 'cluster:' + n.block;
        if (!g.hasNode(cluster)) g.setNode(cluster, { label: n.block, paddingTop: 22 });
        g.setParent(id, cluster);
      }
    }
    for (const n of state.graph.nodes) {
      const to = shown(n.name);
      for (const input of n.inputs) {
        const from = shown(input);
        if (from !== to && !g.hasEdge(from, to)) g.setEdge(from, to);
      }
    }
    dagre.layout(g);
    const vp = $('#viewport');
    vp.replaceChildren();
    const defs = svg('defs');
    const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#9aa7b8' }));
    defs.append(marker);
    vp.append(defs);
    for (const id of g.nodes().filter((id) => id.startsWith('cluster:'))) {
      const c = g.node(id);
      const name = id.slice(8);
      const box = svg('g', { class: 'cluster', 'data-block': name });
      box.append(svg('rect', { x: c.x - c.width / 2, y: c.y - c.height / 2, width: c.width, height: c.height, rx: 8, fill: '#fffaf0', stroke: '#c59a4a', 'stroke-dasharray': '5 3' }));
      // The label sits just above the box, clear of the first node inside.
      const t = svg('text', { x: c.x - c.width / 2 + 4, y: c.y - c.height / 2 - 4, 'font-size': 11, fill: '#8a6418' });
      t.textContent = `− ${name} (double-click to close)`;
      box.append(t);
      box.addEventListener('dblclick', (ev) => { ev.stopPropagation(); state.expanded.delete(name); drawGraph(); });
      vp.append(box);
    }
    for (const e of g.edges()) {
      const pts = g.edge(e).points;
      vp.append(svg('path', { class: 'edge', d: 'M' + pts.map((p) => `${p.x},${p.y}`).join(' L') }));
    }
    for (const id of g.nodes().filter((id) => !id.startsWith('cluster:'))) {
      const p = g.node(id);
      const i = info(id);
      const classes = ['node'];
      if (i.block) classes.push('block');
      if (i.conv) classes.push('conv');
      if (state.matches.has(i.name)) classes.push('match');
      if (state.selected === i.name) classes.push('selected');
      const node = svg('g', { class: classes.join(' '), 'data-name': i.name, transform: `translate(${p.x - p.width / 2},${p.y - p.height / 2})` });
      node.append(svg('rect', { width: p.width, height: p.height }));
      const t1 = svg('text', { x: 10, y: 13 });
      t1.textContent = (i.block ? '+ ' : '') + i.name;
      const t2 = svg('text', { x: 10, y: 26, class: 'sub' });
      t2.textContent = `${i.op} ${shapeText(i.shape)}`;
      node.append(t1, t2);
      if (!isExported(i.name)) node.setAttribute('opacity', '0.45');
      node.addEventListener('click', (ev) => { ev.stopPropagation(); select(i.name); });
      node.addEventListener('dblclick', (ev) => {
        ev.stopPropagation();
        if (i.block) { state.expanded.add(i.name); drawGraph(); }
      });
      node.addEventListener('mouseenter', () => showTip(node, i));
      node.addEventListener('mouseleave', () => { $('#tooltip').hidden = true; });
      vp.append(node);
    }
    state.layout = g.graph();
    applyView();
  }

  function showTip(node, i) {
    const tip = $('#tooltip');
    tip.textContent = `${i.name}\nop: ${i.op}\noutput: ${shapeText(i.shape)}\nparameters: ${fmtInt(i.params)}\nMACs: ${fmtInt(i.macs)}` +
      (i.block ? '\n(double-click to open the block)' : '');
    const r = node.getBoundingClientRect();
    const pane = $('#graph-pane').getBoundingClientRect();
    tip.style.left = `${r.right - pane.left + 8}px`;
    tip.style.top = `${r.top - pane.top}px`;
    tip.hidden = false;
  }

  function applyView() {
    const v = state.view;
    $('#viewport').setAttribute('transform', `translate(${v.x},${v.y}) scale(${v.k})`);
  }
  function fit() {
    const box = $('#graph').getBoundingClientRect();
    const l = state.layout;
    if (!l || !l.width) return;
    const k = Math.min(1.2, (box.width - 20) / l.width, (box.height - 20) / l.height);
    state.view = { k: Math.max(k, 0.05), x: (box.width - l.width * Math.max(k, 0.05)) / 2, y: 10 };
    applyView();
  }
  // Centres the view on a node, at a readable zoom.
  function focus(name) {
    const node = document.querySelector(`.node[data-name="${CSS.escape(name)}"]`);
    if (!node) return;
    const m = /translate\(([-\d.e]+),([-\d.e]+)\)/.exec(node.getAttribute('transform'));
    const rect = node.querySelector('rect');
    const box = $('#graph').getBoundingClientRect();
    const k = Math.max(state.view.k, 0.8);
    const cx = parseFloat(m[1]) + rect.width.baseVal.value / 2;
    const cy = parseFloat(m[2]) + 16;
    state.view = { k, x: box.width / 2 - cx * k, y: box.height / 2 - cy * k };
    applyView();
  }
  function setupPanZoom() {
    const area = $('#graph');
    let drag = null;
    area.addEventListener('mousedown', (ev) => {
      drag = { x: ev.clientX, y: ev.clientY, vx: state.view.x, vy: state.view.y };
      area.classList.add('panning');
    });
    window.addEventListener('mousemove', (ev) => {
      if (!drag) return;
      state.view.x = drag.vx + ev.clientX - drag.x;
      state.view.y = drag.vy + ev.clientY - drag.y;
      applyView();
    });
    window.addEventListener('mouseup', () => { drag = null; area.classList.remove('panning'); });
    area.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      const r = area.getBoundingClientRect();
      const px = ev.clientX - r.left;
      const py = ev.clientY - r.top;
      const f = Math.exp(-ev.deltaY * 0.0015);
      const v = state.view;
      const k = Math.min(4, Math.max(0.03, v.k * f));
      state.view = { k, x: px - (px - v.x) * (k / v.k), y: py - (py - v.y) * (k / v.k) };
      applyView();
    }, { passive: false });
  }

  // --- search: a name, a part of one, or a glob (* ? [..]) ---
  function matcher(text) {
    if (/[*?[]/.test(text)) {
      let re = '';
      for (const ch of text) {
        if (ch === '*') re += '.*';
        else if (ch === '?') re += '.';
        else if (ch === '[' || ch === ']') re += ch;
        else re += ch.replace(/[.+^${}()|\\/-]/g, '\\$&');
      }
      const rx = new RegExp('^' + re + '$');
      return (name) => rx.test(name);
    }
    const lower = text.toLowerCase();
    return (name) => name.toLowerCase().includes(lower);
  }
  function search(text) {
    state.matches = new Set();
    text = text.trim();
    if (text) {
      let test;
      try { test = matcher(text); } catch (e) { $('#search-count').textContent = 'bad pattern'; return; }
      for (const n of state.graph.nodes) if (test(n.name)) state.matches.add(n.name);
      for (const b of state.blocks.keys()) if (test(b)) state.matches.add(b);
      // Blocks holding a matching node open, so that the node shows.
      for (const n of state.graph.nodes) if (state.matches.has(n.name) && n.block && !state.matches.has(n.block)) state.expanded.add(n.block);
    }
    const count = state.matches.size;
    $('#search-count').textContent = text ? `${count} match${count === 1 ? '' : 'es'}` : '';
    drawGraph();
    const first = [...state.matches][0];
    if (first) focus(first);
  }

  // --- inputs ---
  function drawInputs() {
    const bar = $('#inputs');
    bar.replaceChildren();
    for (const inp of state.inputs) {
      const top = inp.predictions && inp.predictions[0];
      const b = el('button', { class: 'input-tab' + (inp.index === state.input ? ' active' : ''), 'data-index': inp.index, type: 'button', title: inp.label });
      if (inp.picture) b.append(el('img', { src: api.inputUrl(inp.index), alt: inp.label }));
      const text = el('span', {}, el('div', { text: inp.label }));
      if (top) text.append(el('div', { class: 'pred', text: `${top.name || 'class ' + top.class} ${(100 * top.probability).toFixed(1)}%` }));
      b.append(text);
      b.addEventListener('click', () => {
        state.input = inp.index;
        drawInputs();
        if (state.selected) select(state.selected, false);
      });
      bar.append(b);
    }
  }

  // --- the selected node ---
  function options(id, values, current, onChange, disabled) {
    const s = el('select', { id });
    for (const [v, label] of values) {
      const o = el('option', { value: v, text: label });
      if (v === current) o.selected = true;
      s.append(o);
    }
    if (disabled) s.disabled = true;
    s.addEventListener('change', () => onChange(s.value));
    return s;
  }

  function select(name, refocus = true) {
    state.selected = name;
    document.querySelectorAll('.node.selected').forEach((n) => n.classList.remove('selected'));
    const node = document.querySelector(`.node[data-name="${CSS.escape(name)}"]`);
    if (node) node.classList.add('selected');
    else if (refocus) { drawGraph(); }
    renderDetail();
  }

  function renderDetail() {
    const name = state.selected;
    const token = ++state.render;
    const n = state.nodes.get(name) || state.nodes.get(state.blocks.get(name).output);
    const isBlock = state.blocks.has(name);
    const d = $('#detail');
    d.replaceChildren();
    d.append(el('h2', { id: 'node-title', text: name }));
    const meta = isBlock ? `block; output ${n.name}` : n.op;
    d.append(el('p', { id: 'node-meta', text: `${meta} · output ${shapeText(n.shape)} · ${fmtInt(info(isBlock ? 'block:' + name : name).params)} parameters · ${fmtInt(info(isBlock ? 'block:' + name : name).macs)} MACs` }));
    if (!isExported(name)) {
      d.append(el('p', { class: 'muted', text: `'${name}' is not in this static export.` }));
      return;
    }
    const imageShaped = n.shape.length === 3;
    const controls = el('div', { class: 'controls' });
    if (imageShaped) {
      controls.append(el('label', { text: 'channels ' }, options('channels', [['8', 'top 8'], ['16', 'top 16'], ['32', 'top 32'], ['64', 'top 64'], ['all', 'all']], state.grid.channels, (v) => { state.grid.channels = v; renderDetail(); }, !!STATIC)));
      controls.append(el('label', { text: 'normalise ' }, options('norm', [['auto', 'auto (by activation)'], ['shared', 'shared range'], ['per-channel', 'per channel']], state.grid.norm, (v) => { state.grid.norm = v; renderDetail(); }, !!STATIC)));
      controls.append(el('label', { text: 'colormap ' }, options('cmap', [['auto', 'auto'], ['gray', 'gray'], ['viridis', 'viridis'], ['magma', 'magma'], ['inferno', 'inferno'], ['rdbu', 'RdBu (diverging)']], state.grid.cmap, (v) => { state.grid.cmap = v; renderDetail(); }, !!STATIC)));
    }
    if (n.cam_capable) {
      controls.append(el('label', { text: 'CAM ' }, options('cam-method', state.methods.map((m) => [m.key, m.label]), state.method, (v) => { state.method = v; renderDetail(); }, !!STATIC)));
    }
    if (STATIC) controls.append(el('span', { class: 'muted', text: 'static export: controls fixed at their defaults' }));
    d.append(controls);
    const row = el('div', { class: state.sideBySide ? 'row side' : 'row', id: 'per-input' });
    d.append(row);
    const shownInputs = state.sideBySide ? state.inputs.map((i) => i.index) : [state.input];
    for (const i of shownInputs) row.append(inputColumn(name, n, i, token));
  }

  function inputColumn(name, n, i, token) {
    const col = el('div', { class: 'input-col', 'data-input': i });
    col.append(el('h3', { text: state.inputs[i].label }));
    const current = () => token === state.render;
    if (n.shape.length === 3) {
      const img = el('img', { class: 'grid-img', alt: `${name} feature maps, input ${i}` });
      img.addEventListener('error', () => { if (current()) img.replaceWith(el('p', { class: 'error', text: 'the feature-map grid failed to load' })); });
      img.src = api.gridUrl(name, i);
      col.append(el('figure', {}, el('figcaption', { text: 'feature maps' }), img));
    }
    // The CAM beside the statistics, so that both show without scrolling.
    const lower = el('div', { class: 'row' });
    col.append(lower);
    if (n.cam_capable && state.inputs[i].picture) lower.append(camBox(name, i, current));
    const statsBox = el('div', { class: 'stats-box' }, el('span', { class: 'muted', text: 'statistics…' }));
    lower.append(statsBox);
    api.stats(name, i).then((s) => {
      if (!current()) return;
      const cells = [['mean', s.mean], ['std', s.std], ['min', s.min], ['max', s.max], ['zero_fraction', s.zero_fraction]];
      const head = el('tr', {}, ...cells.map(([k]) => el('th', { text: k === 'zero_fraction' ? 'zeros' : k })), el('th', { text: 'dead channels' }));
      const body = el('tr', {}, ...cells.map(([k, v]) => el('td', { 'data-stat': k, 'data-value': String(v), text: k === 'zero_fraction' ? `${(100 * v).toFixed(2)}%` : fmtNum(v) })),
        el('td', { 'data-stat': 'dead_channels', 'data-value': String(s.dead_channels.length), text: String(s.dead_channels.length) }));
      const table = el('table', { class: 'stats' }, head, body);
      const hist = el('img', { class: 'hist-img', alt: `${name} histogram`, src: api.histUrl(name, i) });
      statsBox.replaceChildren(table, el('figure', {}, hist));
      if (s.top_channels.length) {
        const list = el('ol', { class: 'top-channels', start: '1' });
        for (const c of s.top_channels) list.append(el('li', { text: `channel ${c.channel}: mean ${fmtNum(c.mean)}` }));
        statsBox.append(el('div', {}, el('b', { text: 'top channels' }), list));
      }
    }).catch((e) => { if (current()) statsBox.replaceChildren(el('p', { class: 'error', text: e.message })); });
    return col;
  }

  function camBox(name, i, current) {
    const box = el('div', { class: 'cam-box' });
    const method = STATIC ? STATIC.method : state.method;
    const label = (state.methods.find((m) => m.key === method) || { label: method }).label;
    const st = el('div', { class: 'cam-status' }, el('span', { class: 'spinner' }), `computing ${label} over ${name}…`);
    box.append(st);
    const started = Date.now();
    status(`computing ${label} for input ${i}…`);
    api.cam(name, i, method).then((c) => {
      if (!current()) return;
      if (!c) { st.replaceChildren('no CAM in this export'); return; }
      const img = el('img', { class: 'cam-img', alt: `${c.method} over ${name}` });
      const cls = c.class_name ? `${c.class_name} (class ${c.class})` : `class ${c.class}`;
      const caption = el('figcaption', { class: 'cam-caption', text: `${c.method} over ${name}: ${cls}, logit ${c.score.toFixed(3)}` });
      img.addEventListener('load', () => { if (current()) { st.remove(); status(`${c.method} ready (${((Date.now() - started) / 1000).toFixed(1)} s)`); } });
      img.addEventListener('error', () => { st.replaceChildren(el('span', { class: 'error', text: 'the CAM picture failed to load' })); });
      img.src = c.image;
      box.append(el('figure', {}, caption, img));
    }).catch((e) => { if (current()) st.replaceChildren(el('span', { class: 'error', text: e.message })); });
    return box;
  }

  async function start() {
    setupPanZoom();
    const [graph, inputs, methods] = await Promise.all([api.graph(), api.inputs(), api.methods()]);
    state.graph = graph;
    state.inputs = inputs;
    state.methods = methods;
    if (STATIC) state.method = STATIC.method;
    for (const n of graph.nodes) state.nodes.set(n.name, n);
    for (const b of graph.blocks) state.blocks.set(b.name, b);
    $('#model-name').textContent = `${graph.model}: ${fmtInt(graph.nodes.length)} nodes, ${fmtInt(graph.trainable)} parameters${STATIC ? ' (static export)' : ''}`;
    $('#search').addEventListener('input', (ev) => search(ev.target.value));
    $('#search').addEventListener('keydown', (ev) => {
      const first = [...state.matches][0];
      if (ev.key === 'Enter' && first) select(first);
    });
    $('#expand-all').addEventListener('click', () => { for (const b of state.blocks.keys()) state.expanded.add(b); drawGraph(); });
    $('#collapse-all').addEventListener('click', () => { state.expanded.clear(); drawGraph(); });
    $('#fit').addEventListener('click', fit);
    $('#side-by-side').addEventListener('change', (ev) => { state.sideBySide = ev.target.checked; if (state.selected) renderDetail(); });
    drawInputs();
    drawGraph();
    fit();
    document.body.dataset.ready = 'true';
    status(`ready: ${graph.nodes.length} nodes, ${inputs.length} input${inputs.length === 1 ? '' : 's'}`);
  }
  document.addEventListener('DOMContentLoaded', () => {
    start().catch((e) => { status('error: ' + e.message); $('#detail').replaceChildren(el('p', { class: 'error', text: e.message })); });
  });
})();
