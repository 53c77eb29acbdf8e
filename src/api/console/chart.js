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

// Dots at positions: `points` are { x: longitude, y: latitude, label }; an equirectangular
// view of their bounding box, corrected for latitude.
export function dots(canvas, points) {
  const { g, width, height, ratio } = fit(canvas);
  if (!points.length) return;
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const p of points) { x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x); y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y); }
  const squeeze = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
  const spanX = Math.max((x1 - x0) * squeeze, 1e-4);
  const spanY = Math.max(y1 - y0, 1e-4);
  const pad = 24 * ratio;
  const scale = Math.min((width - 2 * pad) / spanX, (height - 2 * pad) / spanY);
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  g.fillStyle = '#0b5cad';
  for (const p of points) {
    const x = width / 2 + (p.x - cx) * squeeze * scale;
    const y = height / 2 - (p.y - cy) * scale;
    g.beginPath();
    g.arc(x, y, 4 * ratio, 0, 2 * Math.PI);
    g.fill();
  }
}
