// Charts on a canvas, drawn in one pass however many points (thousands are cheap): time
// lines with several series, and bars. The canvas carries an aria-label; a table beside
// each chart has the same figures for a screen reader.

const COLORS = ['#0b5cad', '#c2410c', '#15803d', '#7e22ce', '#a16207', '#0f766e', '#be123c'];

function fit(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio);
  const height = Math.round(canvas.clientHeight * ratio);
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, width, height);
  g.font = `${12 * ratio}px system-ui`;
  return { g, width, height, ratio };
}

function stamp(ms, span) {
  const t = new Date(ms).toISOString();
  return span > 2 * 86400e3 ? t.slice(5, 16).replace('T', ' ') : t.slice(11, 19);
}

// Lines over time: `series` are { label, points: [[ms, y], ...] }.
export function lines(canvas, series) {
  const { g, width, height, ratio } = fit(canvas);
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const s of series) {
    for (const [x, y] of s.points) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  }
  if (x0 === Infinity) return;
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += 1; y0 -= 1; }
  const pad = 36 * ratio;
  const sx = (x) => pad + ((x - x0) / (x1 - x0)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - y0) / (y1 - y0)) * (height - 2 * pad);
  series.forEach((s, n) => {
    const color = COLORS[n % COLORS.length];
    g.strokeStyle = color;
    g.fillStyle = color;
    g.lineWidth = 1.5 * ratio;
    g.beginPath();
    s.points.forEach(([x, y], i) => (i ? g.lineTo(sx(x), sy(y)) : g.moveTo(sx(x), sy(y))));
    g.stroke();
    if (s.points.length === 1) g.fillRect(sx(s.points[0][0]) - 3 * ratio, sy(s.points[0][1]) - 3 * ratio, 6 * ratio, 6 * ratio);
    g.fillText(s.label, pad + n * 140 * ratio, pad - 10 * ratio);
  });
  g.fillStyle = '#5a6470';
  g.fillText(y1.toFixed(1), 2 * ratio, pad + 4 * ratio);
  g.fillText(y0.toFixed(1), 2 * ratio, height - pad);
  g.fillText(stamp(x0, x1 - x0), pad, height - 10 * ratio);
  const last = stamp(x1, x1 - x0);
  g.fillText(last, width - pad - g.measureText(last).width, height - 10 * ratio);
}

// Bars: `items` are { label, values: [y per series] }, `names` the series.
export function bars(canvas, items, names) {
  const { g, width, height, ratio } = fit(canvas);
  if (!items.length) return;
  const top = Math.max(1, ...items.flatMap((i) => i.values));
  const pad = 36 * ratio;
  const slot = (width - 2 * pad) / items.length;
  const bar = Math.max(1, (slot * 0.8) / names.length);
  items.forEach((item, i) => {
    item.values.forEach((v, n) => {
      const h = (v / top) * (height - 2 * pad);
      g.fillStyle = COLORS[n % COLORS.length];
      g.fillRect(pad + i * slot + n * bar, height - pad - h, bar - ratio, h);
    });
    g.fillStyle = '#5a6470';
    g.fillText(item.label, pad + i * slot, height - 10 * ratio, slot);
  });
  names.forEach((name, n) => {
    g.fillStyle = COLORS[n % COLORS.length];
    g.fillText(name, pad + n * 140 * ratio, pad - 10 * ratio);
  });
  g.fillStyle = '#5a6470';
  g.fillText(top.toFixed(0), 2 * ratio, pad + 4 * ratio);
}

// Web Mercator: where (lon, lat) falls on the 256-pixel world of zoom 0.
function mercator(lon, lat) {
  const sin = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
  return [((lon + 180) / 360) * 256, (0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI)) * 256];
}

// Sensors as dots at their positions (`points` are { lon, lat }), at the largest zoom that
// shows them all; over map tiles when `tiles` is { url: 'https://…/{z}/{x}/{y}.png',
// attribution } (the configured tile server), else on a plain background.
export function map(canvas, points, tiles) {
  const { g, width, height, ratio } = fit(canvas);
  if (!points.length) return;
  const world = points.map((p) => mercator(p.lon, p.lat));
  const xs = world.map((w) => w[0]);
  const ys = world.map((w) => w[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = 24 * ratio;
  let z = 16;
  while (z > 1 && ((x1 - x0) * 2 ** z * ratio > width - 2 * pad || (y1 - y0) * 2 ** z * ratio > height - 2 * pad)) z -= 1;
  const scale = 2 ** z * ratio; // canvas pixels per world pixel of zoom 0
  const [cx, cy] = [(x0 + x1) / 2, (y0 + y1) / 2];
  const at = (wx, wy) => [width / 2 + (wx - cx) * scale, height / 2 + (wy - cy) * scale];
  const drawDots = () => {
    g.fillStyle = '#0b5cad';
    g.strokeStyle = '#fff';
    g.lineWidth = 1.5 * ratio;
    for (const [wx, wy] of world) {
      const [x, y] = at(wx, wy);
      g.beginPath();
      g.arc(x, y, 5 * ratio, 0, 2 * Math.PI);
      g.fill();
      g.stroke();
    }
    if (tiles && tiles.attribution) {
      g.font = `${11 * ratio}px system-ui`;
      const w = g.measureText(tiles.attribution).width;
      g.fillStyle = 'rgba(255,255,255,.85)';
      g.fillRect(width - w - 8 * ratio, height - 16 * ratio, w + 8 * ratio, 16 * ratio);
      g.fillStyle = '#1b1f23';
      g.fillText(tiles.attribution, width - w - 4 * ratio, height - 4 * ratio);
    }
  };
  if (tiles && tiles.url) {
    const n = 2 ** z;
    const span = 256 / n; // one tile, in world pixels of zoom 0
    const first = (c, half) => Math.max(0, Math.floor((c - half / scale) / span));
    const last = (c, half) => Math.min(n - 1, Math.floor((c + half / scale) / span));
    for (let tx = first(cx, width / 2); tx <= last(cx, width / 2); tx += 1) {
      for (let ty = first(cy, height / 2); ty <= last(cy, height / 2); ty += 1) {
        const image = new Image();
        const [x, y] = at(tx * span, ty * span);
        image.onload = () => { g.drawImage(image, x, y, 256 * ratio, 256 * ratio); drawDots(); };
        image.src = tiles.url.replace('{z}', z).replace('{x}', tx).replace('{y}', ty);
      }
    }
  }
  drawDots();
}
