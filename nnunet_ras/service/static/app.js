/*
 * nnunet_ras contouring page.
 *
 * A plain script (no build step, no framework) that talks to the service ONLY through its public JSON
 * API under /api, always with the header `Authorization: Bearer <token>` (the token the user typed,
 * kept in sessionStorage for this tab). It never puts the token in a URL, so every volume shown in
 * the viewer and every download is fetched here with that header and handed over as an ArrayBuffer
 * (to NiiVue) or a Blob (to the browser's download).
 *
 *   GET /api/me, GET /api/model, GET/POST /api/jobs, DELETE /api/jobs/{id},
 *   POST /api/jobs/{id}/margins, POST /api/jobs/{id}/send (a DICOM node job's results again), and the
 *   file URLs that a job's JSON lists.
 *
 * A 401 answer from any call logs out and shows the login form with a message. Server text is only
 * ever written with textContent.
 */
'use strict';

const TOKEN_KEY = 'nnunet_ras.token';
const POLL_MS = 1000;
const IDLE_POLL_MS = 10000;
const UNFINISHED = new Set(['queued', 'preprocessing', 'predicting', 'exporting']);
const WINDOWS = {  // CT window presets: [cal_min, cal_max] = [L - W/2, L + W/2]
  abdomen: [-160, 240],  // W400 L40
  liver: [-45, 105],     // W150 L30
  bone: [-500, 1300],    // W1800 L400
};
const DRAW_RANK = { PTV: 1, CTV: 2, GTV: 3 };  // overlay stacking by RTROIInterpretedType; others (organs) 0
const DOWNLOAD_NAMES = {
  labels: 'labels.nii.gz', rtstruct: 'RTSTRUCT.dcm', seg: 'SEG.dcm', report: 'report.json', zip: 'job.zip',
};

const state = {
  token: null,
  jobs: [],
  pollTimer: null,
  jobsRequest: 0,      // counter: only the newest job-list answer is shown
  review: null,        // {id, signature} of the job shown in the viewer
  reviewLoad: 0,       // counter: a newer load makes an older one stop
  nv: null,
  ct: null,            // NVImage of the CT
  overlays: [],        // [{name, image}] in structure order
  windowPreset: 'abdomen',
  view: 'axial',
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

class Unauthorized extends ApiError {}

/** A readable message from a FastAPI error body ({"detail": str} or a 422 list of {msg, loc}). */
function detailText(body, status) {
  const detail = body && body.detail;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const where = Array.isArray(d.loc) ? d.loc.filter((x) => x !== 'body').join('.') : '';
      return where ? `${where}: ${d.msg}` : String(d.msg);
    }).join('; ');
  }
  return `request failed (HTTP ${status})`;
}

/** fetch() with the bearer token; a non-2xx answer throws ApiError (Unauthorized for 401, after logging out). */
async function apiFetch(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set('Authorization', `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers, cache: 'no-store' });
  if (response.ok) return response;
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  const message = detailText(body, response.status);
  if (response.status === 401) {
    logout('Your token was not accepted (or the session ended): please log in again.');
    throw new Unauthorized(401, message);
  }
  throw new ApiError(response.status, message);
}

async function apiJson(path, options = {}) {
  const response = await apiFetch(path, options);
  return response.status === 204 ? null : response.json();
}

// ---------------------------------------------------------------- small DOM helpers

function el(tag, { cls, text, attrs } = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function showMessage(id, text, kind = 'info') {
  const node = $(id);
  node.textContent = text || '';
  node.hidden = !text;
  node.classList.toggle('error', kind === 'error');
  node.classList.toggle('ok', kind === 'ok');
}

function errorText(err) {
  return err instanceof ApiError ? err.message : `error: ${err && err.message ? err.message : err}`;
}

/** Margin specs from a textarea: one per line; blank lines and lines starting with # are skipped. */
function marginLines(text) {
  return text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line && !line.startsWith('#'));
}

function formatTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function rgbCss(color) {
  const [r, g, b] = (Array.isArray(color) ? color : [255, 255, 0]).map((c) => Math.max(0, Math.min(255, Number(c) || 0)));
  return `rgb(${r}, ${g}, ${b})`;
}

// ---------------------------------------------------------------- login / session

async function login(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  let me;
  try {
    me = await apiJson('/api/me');
  } catch (err) {
    if (!(err instanceof Unauthorized)) {
      showMessage('login-message', `Could not reach the service: ${errorText(err)}`, 'error');
    }
    return;
  }
  $('whoami').textContent = me.name;
  $('whoami-role').textContent = me.role === 'admin' ? '(admin)' : '';
  $('session').hidden = false;
  $('login-panel').hidden = true;
  $('app').hidden = false;
  showMessage('login-message', '');
  $('token').value = '';
  loadModelCard();
  refreshJobs();
}

function logout(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopPolling();
  closeReview();
  state.jobs = [];
  $('jobs').replaceChildren();
  $('app').hidden = true;
  $('session').hidden = true;
  $('login-panel').hidden = false;
  showMessage('login-message', message || '', 'error');
  $('token').focus();
}

// ---------------------------------------------------------------- model card

async function loadModelCard() {
  let card;
  try {
    card = await apiJson('/api/model');
  } catch (err) {
    if (!(err instanceof Unauthorized)) showMessage('model-message', `Model card: ${errorText(err)}`, 'error');
    return;
  }
  showMessage('model-message', '');
  $('model-name').textContent = card.name;
  const folds = Array.isArray(card.folds) && card.folds.length ? `folds ${card.folds.join(', ')}` : '';
  $('model-network').textContent = [card.configuration, card.plans, folds].filter(Boolean).join(' · ') || 'not stated';
  $('model-trained-on').textContent = card.trained_on || 'not stated';
  const dice = Object.entries(card.cross_validation_dice || {});
  $('model-dice').textContent = dice.length
    ? dice.map(([label, value]) => `${label} ${Number(value).toFixed(3)}`).join(', ')
    : 'not available';
  $('model-intended-use').textContent = card.intended_use || 'not stated';
  const warning = $('model-warning');
  warning.textContent = card.warning ? `Warning: ${card.warning}` : '';
  warning.hidden = !card.warning;
}

// ---------------------------------------------------------------- submitting

async function submitJob(event) {
  event.preventDefault();
  const files = $('files').files;
  if (!files.length) {
    showMessage('submit-message', 'Choose a file (or several DICOM files) first.', 'error');
    return;
  }
  const form = new FormData();
  for (const file of files) form.append('files', file, file.name);
  for (const margin of marginLines($('margins').value)) form.append('margin', margin);
  const button = $('submit');
  button.disabled = true;
  showMessage('submit-message', `Uploading ${files.length} file${files.length > 1 ? 's' : ''}…`);
  try {
    const job = await apiJson('/api/jobs', { method: 'POST', body: form });
    showMessage('submit-message', `Job ${job.id} submitted (${job.state}).`, 'ok');
    $('submit-form').reset();
    await refreshJobs();
  } catch (err) {
    if (!(err instanceof Unauthorized)) showMessage('submit-message', `Not submitted: ${errorText(err)}`, 'error');
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- job list

function stopPolling() {
  if (state.pollTimer !== null) clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

/** Every second while a job runs or its results are being sent; otherwise every 10 s, so that jobs the DICOM node
 *  creates (a TPS sent a CT) appear without a reload. */
function schedulePoll() {
  stopPolling();
  if (!state.token) return;
  const busy = state.jobs.some((job) => UNFINISHED.has(job.state) ||
    (job.delivery && ['pending', 'sending', 'waiting for the job'].includes(job.delivery.state)));
  state.pollTimer = setTimeout(refreshJobs, busy ? POLL_MS : IDLE_POLL_MS);
}

async function refreshJobs() {
  stopPolling();
  if (!state.token) return;
  const request = ++state.jobsRequest;
  try {
    const answer = await apiJson('/api/jobs');
    if (request !== state.jobsRequest) return;  // a newer refresh is under way: its answer wins
    state.jobs = answer.jobs || [];
    showMessage('jobs-message', '');
    renderJobs();
    syncReview();
  } catch (err) {
    if (err instanceof Unauthorized || request !== state.jobsRequest) return;
    showMessage('jobs-message', `Job list: ${errorText(err)}`, 'error');
    state.pollTimer = setTimeout(refreshJobs, POLL_MS * 3);  // the service may be restarting
    return;
  }
  schedulePoll();
}

function jobStateText(job) {
  if (job.state === 'queued' && job.position) return `queued (position ${job.position})`;
  return job.state;
}

/** One <li> per job, updated in place so that focus and buttons survive the 1 s polling. */
function renderJobs() {
  const list = $('jobs');
  const seen = new Set();
  state.jobs.forEach((job, index) => {
    seen.add(job.id);
    let item = list.querySelector(`li[data-id="${CSS.escape(job.id)}"]`);
    if (!item) item = createJobItem(job);
    updateJobItem(item, job);
    if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
  });
  for (const item of [...list.children]) {
    if (!seen.has(item.dataset.id)) item.remove();
  }
  $('jobs-empty').hidden = state.jobs.length > 0;
}

function createJobItem(job) {
  const item = el('li', { cls: 'job', attrs: { 'data-id': job.id } });
  const head = el('div', { cls: 'job-head' });
  head.append(el('span', { cls: 'job-name' }), el('span', { cls: 'job-state' }));
  const progress = el('progress', { cls: 'job-progress', attrs: { max: '100', 'aria-label': `progress of job ${job.id}` } });
  const actions = el('div', { cls: 'job-actions' });
  const review = el('button', { cls: 'job-review', text: 'Review', attrs: { type: 'button' } });
  const remove = el('button', { cls: 'job-delete', text: 'Delete', attrs: { type: 'button' } });
  const resend = el('button', { cls: 'job-send', text: 'Send again', attrs: { type: 'button' } });
  review.addEventListener('click', () => openReview(item.dataset.id));
  remove.addEventListener('click', () => deleteJob(item.dataset.id));
  resend.addEventListener('click', () => sendAgain(item.dataset.id));
  actions.append(review, resend, remove);
  item.append(head, el('div', { cls: 'job-meta muted' }), progress, el('div', { cls: 'job-message' }),
    el('div', { cls: 'job-error error' }), el('div', { cls: 'job-delivery' }), actions);
  return item;
}

function updateJobItem(item, job) {
  item.dataset.state = job.state;
  const input = job.input || {};
  const name = [input.name, input.patient].filter(Boolean).join(' · ') || job.id;
  item.querySelector('.job-name').textContent = name;
  item.querySelector('.job-state').textContent = jobStateText(job);
  const source = job.source && job.source.startsWith('dicom:') ? `sent by DICOM AE ${job.source.slice(6)}` : '';
  const meta = [`job ${job.id}`, job.owner ? `by ${job.owner}` : '', source, formatTime(job.created)];
  if (job.margins && job.margins.length) meta.push(`margins ${job.margins.join('; ')}`);
  item.querySelector('.job-meta').textContent = meta.filter(Boolean).join(' · ');
  const progress = item.querySelector('.job-progress');
  const pct = Math.round(100 * Math.max(0, Math.min(1, Number(job.progress) || 0)));
  progress.value = job.state === 'done' ? 100 : pct;
  progress.hidden = !UNFINISHED.has(job.state);
  progress.textContent = `${pct} %`;
  item.querySelector('.job-message').textContent = job.message || '';
  const error = item.querySelector('.job-error');
  error.textContent = job.error ? `Failed: ${job.error}` : '';
  error.hidden = !job.error;
  const delivery = job.delivery;
  const deliveryLine = item.querySelector('.job-delivery');
  deliveryLine.hidden = !delivery;
  if (delivery) {
    const to = delivery.destinations.map((d) => `${d.ae_title} at ${d.host}:${d.port}${d.sent ? ' ✓' : ''}`);
    deliveryLine.textContent = `Results to ${to.join(', ')}: ${delivery.state}` +
      (delivery.attempts ? ` (attempt ${delivery.attempts})` : '') + (delivery.error ? ` · ${delivery.error}` : '');
    deliveryLine.classList.toggle('error', delivery.state === 'failed');
  }
  item.querySelector('.job-send').hidden = !(delivery && job.state === 'done' &&
    ['sent', 'failed'].includes(delivery.state));
  const review = item.querySelector('.job-review');
  review.hidden = job.state !== 'done' && !(state.review && state.review.id === job.id);
  item.classList.toggle('selected', Boolean(state.review && state.review.id === job.id));
}

async function sendAgain(id) {
  try {
    await apiJson(`/api/jobs/${encodeURIComponent(id)}/send`, { method: 'POST' });
  } catch (err) {
    if (!(err instanceof Unauthorized)) showMessage('jobs-message', `Send again: ${errorText(err)}`, 'error');
  }
  await refreshJobs();
}

async function deleteJob(id) {
  if (!window.confirm(`Delete job ${id} and all its files?`)) return;
  try {
    await apiJson(`/api/jobs/${encodeURIComponent(id)}`, { method: 'DELETE' });
    if (state.review && state.review.id === id) closeReview();
  } catch (err) {
    if (!(err instanceof Unauthorized)) showMessage('jobs-message', `Delete: ${errorText(err)}`, 'error');
  }
  await refreshJobs();
}

// ---------------------------------------------------------------- review

function findJob(id) {
  return state.jobs.find((job) => job.id === id) || null;
}

/** What the viewer shows of a job: when it changes (margins re-applied), the viewer reloads. */
function reviewSignature(job) {
  return JSON.stringify([job.finished, job.files && job.files.image,
    (job.structures || []).map((s) => [s.name, s.url, s.volume_cc, s.color])]);
}

function openReview(id) {
  const job = findJob(id);
  if (!job) return;
  state.review = { id, signature: null };
  $('review-panel').hidden = false;
  $('review-margins').value = (job.margins || []).join('\n');
  showMessage('margins-message', '');
  showMessage('download-message', '');
  renderJobs();
  syncReview();
  $('review-panel').scrollIntoView({ block: 'nearest' });
}

function closeReview() {
  state.review = null;
  state.reviewLoad += 1;
  $('review-panel').hidden = true;
  clearViewer();
  setViewerState('empty', '');
  if (state.jobs.length) renderJobs();
}

/** Keeps the review panel in step with the job list (called after every poll). */
function syncReview() {
  if (!state.review) return;
  const job = findJob(state.review.id);
  if (!job) {
    closeReview();
    return;
  }
  renderReviewInfo(job);
  if (job.state !== 'done') {
    state.review.signature = null;
    setViewerState('waiting', `Job is ${jobStateText(job)}${job.message ? `: ${job.message}` : ''}…`);
    return;
  }
  const signature = reviewSignature(job);
  if (signature !== state.review.signature) {
    state.review.signature = signature;
    loadViewer(job);
  }
}

function renderReviewInfo(job) {
  const input = job.input || {};
  $('review-heading').textContent = `Review: ${input.name || job.id}`;
  const parts = [`job ${job.id}`, jobStateText(job)];
  if (input.patient) parts.push(`patient ${input.patient}`);
  if (job.finished) parts.push(`finished ${formatTime(job.finished)}`);
  $('review-subtitle').textContent = parts.join(' · ');
  const warnings = $('review-warnings');
  warnings.replaceChildren(...(job.warnings || []).map((w) => el('li', { text: w })));
  warnings.hidden = !warnings.children.length;
  const hasQuality = job.quality_score !== null && job.quality_score !== undefined;
  $('quality').hidden = !hasQuality;
  $('quality-score').textContent = hasQuality ? Number(job.quality_score).toFixed(3) : '';
  const files = job.files || {};
  for (const button of document.querySelectorAll('.download')) {
    button.disabled = job.state !== 'done' || !files[button.dataset.file];
  }
  $('apply-margins').disabled = job.state !== 'done';
}

function renderStructures(job) {
  const list = $('structures');
  list.replaceChildren();
  const structures = job.structures || [];
  if (!structures.length) list.append(el('li', { cls: 'muted', text: 'No structures.' }));
  for (const s of structures) {
    const item = el('li');
    const label = el('label', { cls: 'structure' });
    const box = el('input', { cls: 'structure-toggle', attrs: { type: 'checkbox', 'data-name': s.name } });
    box.checked = true;
    box.addEventListener('change', applyOverlayOpacity);
    const swatch = el('span', { cls: 'swatch', attrs: { 'aria-hidden': 'true' } });
    swatch.style.backgroundColor = rgbCss(s.color);
    const volume = Number.isFinite(Number(s.volume_cc)) ? `${Number(s.volume_cc).toFixed(1)} cc` : '';
    label.append(box, swatch, el('span', { cls: 'structure-name', text: s.name }),
      el('span', { cls: 'structure-type muted', text: s.type || '' }),
      el('span', { cls: 'structure-volume', text: volume }));
    const goTo = el('button', {
      cls: 'structure-goto', text: 'Go to', attrs: { type: 'button', 'data-name': s.name, 'aria-label': `Show ${s.name}` },
    });
    goTo.addEventListener('click', () => centreOn(s.name));
    item.append(label, goTo);
    list.append(item);
  }
}

// ---------------------------------------------------------------- viewer (NiiVue)

function setViewerState(value, text) {
  const viewer = $('viewer');
  viewer.dataset.state = value;
  $('viewer-status').textContent = text || '';
  $('viewer-status').hidden = !text;
}

function ensureNiivue() {
  if (state.nv) return state.nv;
  if (!window.niivue) throw new Error('the NiiVue viewer (/static/vendor/niivue.umd.js) did not load; run `make install`');
  state.nv = new window.niivue.Niivue({
    backColor: [0, 0, 0, 1],
    crosshairColor: [0.75, 0.75, 0.75, 1],
    crosshairWidth: 0.3,
    crosshairWidthUnit: 'percent',  // a thin line whatever the voxel size
    show3Dcrosshair: true,
    isColorbar: false,
    loadingText: 'Loading...',  // (NiiVue's font has no ellipsis character)
  });
  state.nv.attachTo('gl');
  setView(state.view);
  return state.nv;
}

function clearViewer() {
  const nv = state.nv;
  if (nv) {
    for (const volume of [...nv.volumes].reverse()) nv.removeVolume(volume);
  }
  state.ct = null;
  state.overlays = [];
}

/** The file name NiiVue should see (it picks its reader by extension). */
function volumeName(url, buffer, fallback) {
  const last = decodeURIComponent(String(url).split('?')[0].split('/').pop() || '');
  if (/\.(nii(\.gz)?|nrrd|nhdr|mha|mhd)$/i.test(last)) return last;
  const bytes = new Uint8Array(buffer, 0, Math.min(2, buffer.byteLength));
  return bytes[0] === 0x1f && bytes[1] === 0x8b ? `${fallback}.nii.gz` : `${fallback}.nii`;
}

async function fetchVolume(url, fallbackName) {
  const response = await apiFetch(url);
  const buffer = await response.arrayBuffer();
  return { buffer, name: volumeName(url, buffer, fallbackName) };
}

function structureColormap(index, color) {
  const [r, g, b] = (Array.isArray(color) ? color : [255, 255, 0]).map((c) => Math.max(0, Math.min(255, Math.round(Number(c) || 0))));
  const key = `nnunet_ras_${index}_${r}_${g}_${b}`;
  state.nv.addColormap(key, { R: [0, r], G: [0, g], B: [0, b], A: [0, 255], I: [0, 255] });
  return key;
}

async function loadViewer(job) {
  const ticket = ++state.reviewLoad;
  renderStructures(job);
  setViewerState('loading', 'Loading CT and structures…');
  try {
    const nv = ensureNiivue();
    const structures = job.structures || [];
    const [ct, ...masks] = await Promise.all([
      fetchVolume(job.files.image, 'image'),
      ...structures.map((s, i) => fetchVolume(s.url, `structure_${i}`)),
    ]);
    if (ticket !== state.reviewLoad) return;  // another job (or a newer version of this one) is being shown
    const NVImage = window.niivue.NVImage;
    const [lo, hi] = WINDOWS[state.windowPreset];
    const ctImage = await NVImage.loadFromUrl({
      url: ct.buffer, name: ct.name, colormap: 'gray', cal_min: lo, cal_max: hi,
    });
    const overlayImages = [];
    for (let i = 0; i < masks.length; i += 1) {
      const image = await NVImage.loadFromUrl({
        url: masks[i].buffer, name: masks[i].name, colormap: structureColormap(i, structures[i].color),
        opacity: overlayOpacity(), cal_min: 0.5, cal_max: 1,
      });
      overlayImages.push({ name: structures[i].name, image });
    }
    if (ticket !== state.reviewLoad) return;
    clearViewer();
    nv.addVolume(ctImage);
    // organs underneath, then PTV, CTV and GTV on top (a target inside another stays visible); larger first
    const drawOrder = overlayImages.map((overlay, i) => ({
      overlay, rank: DRAW_RANK[structures[i].type] || 0, size: Number(structures[i].volume_cc) || 0,
    })).sort((a, b) => a.rank - b.rank || b.size - a.size);
    for (const { overlay } of drawOrder) nv.addVolume(overlay.image);
    state.ct = ctImage;
    state.overlays = overlayImages;
    applyWindow(state.windowPreset);
    applyOverlayOpacity();
    setView(state.view);
    const targetsFirst = [...structures].sort((a, b) => Number(b.type === 'GTV') - Number(a.type === 'GTV'));
    targetsFirst.some((s) => centreOn(s.name));  // the first non-empty one, GTVs first
    setViewerState('ready', '');
    $('viewer').dataset.job = job.id;
  } catch (err) {
    if (ticket !== state.reviewLoad || err instanceof Unauthorized) return;
    setViewerState('error', `Could not show this job: ${errorText(err)}`);
  }
}

/** The voxel of a mask (in NiiVue's RAS voxel order) nearest to the mask's centroid; null when empty. */
function maskCentre(image) {
  const data = image.img2RAS();
  const [, nx, ny, nz] = image.dimsRAS;
  let count = 0;
  const sum = [0, 0, 0];
  for (let i = 0; i < data.length; i += 1) {
    if (data[i] > 0) {
      count += 1;
      sum[0] += i % nx;
      sum[1] += Math.floor(i / nx) % ny;
      sum[2] += Math.floor(i / (nx * ny));
    }
  }
  if (!count || nz === undefined) return null;
  const mean = sum.map((v) => v / count);
  let best = null;
  let bestDistance = Infinity;
  for (let i = 0; i < data.length; i += 1) {
    if (data[i] > 0) {
      const v = [i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))];
      const distance = (v[0] - mean[0]) ** 2 + (v[1] - mean[1]) ** 2 + (v[2] - mean[2]) ** 2;
      if (distance < bestDistance) {
        bestDistance = distance;
        best = v;
      }
    }
  }
  return best;
}

/** Moves the crosshair (the slices shown) to the middle of a structure; false when it is empty. */
function centreOn(name) {
  const overlay = state.overlays.find((o) => o.name === name);
  if (!state.nv || !overlay) return false;
  const voxel = maskCentre(overlay.image);
  if (!voxel) return false;
  state.nv.scene.crosshairPos = overlay.image.convertVox2Frac(voxel);
  state.nv.drawScene();
  state.nv.createOnLocationChange();
  return true;
}

function setView(view) {
  state.view = view;
  for (const button of document.querySelectorAll('.view-button')) {
    button.setAttribute('aria-pressed', String(button.dataset.view === view));
  }
  if (!state.nv) return;
  const types = window.niivue.SLICE_TYPE;
  const sliceType = {
    axial: types.AXIAL, coronal: types.CORONAL, sagittal: types.SAGITTAL,
    multiplanar: types.MULTIPLANAR, render: types.RENDER,
  }[view];
  state.nv.setSliceType(sliceType);
}

function applyWindow(preset) {
  state.windowPreset = preset;
  for (const button of document.querySelectorAll('.window-button')) {
    button.setAttribute('aria-pressed', String(button.dataset.window === preset));
  }
  if (!state.nv || !state.ct) return;
  const [lo, hi] = WINDOWS[preset];
  state.ct.cal_min = lo;
  state.ct.cal_max = hi;
  state.nv.updateGLVolume();
}

function overlayOpacity() {
  return Number($('opacity').value) / 100;
}

/** Sets every structure's opacity: the slider's value when its checkbox is ticked, else 0 (hidden). */
function applyOverlayOpacity() {
  $('opacity-value').textContent = `${$('opacity').value} %`;
  if (!state.nv || !state.overlays.length) return;
  const visible = new Map([...document.querySelectorAll('.structure-toggle')]
    .map((box) => [box.dataset.name, box.checked]));
  for (const overlay of state.overlays) {
    overlay.image.opacity = visible.get(overlay.name) === false ? 0 : overlayOpacity();
  }
  state.nv.updateGLVolume();
}

// ---------------------------------------------------------------- margins and downloads

async function applyMargins(event) {
  event.preventDefault();
  if (!state.review) return;
  const id = state.review.id;
  const margins = marginLines($('review-margins').value);
  const button = $('apply-margins');
  button.disabled = true;
  try {
    const job = await apiJson(`/api/jobs/${encodeURIComponent(id)}/margins`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ margins }),
    });
    showMessage('margins-message', `Margins sent; the job is ${jobStateText(job)}.`, 'ok');
  } catch (err) {
    if (!(err instanceof Unauthorized)) showMessage('margins-message', `Not applied: ${errorText(err)}`, 'error');
    button.disabled = false;
    return;
  }
  await refreshJobs();
}

function filenameFromResponse(response, url, fallback) {
  const disposition = response.headers.get('Content-Disposition') || '';
  const star = /filename\*=(?:UTF-8'')?([^;]+)/i.exec(disposition);
  if (star) return decodeURIComponent(star[1].trim().replace(/^"|"$/g, ''));
  const plain = /filename="?([^";]+)"?/i.exec(disposition);
  if (plain) return plain[1];
  const last = decodeURIComponent(String(url).split('?')[0].split('/').pop() || '');
  return last || fallback;
}

async function download(kind) {
  const job = state.review && findJob(state.review.id);
  const url = job && job.files && job.files[kind];
  if (!url) return;
  showMessage('download-message', '');
  try {
    const response = await apiFetch(url);
    const blob = await response.blob();
    const objectUrl = URL.createObjectURL(blob);
    const link = el('a', { attrs: { href: objectUrl, download: filenameFromResponse(response, url, DOWNLOAD_NAMES[kind]) } });
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(objectUrl), 60000);
  } catch (err) {
    if (!(err instanceof Unauthorized)) showMessage('download-message', `Download: ${errorText(err)}`, 'error');
  }
}

// ---------------------------------------------------------------- wiring

function init() {
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (token) login(token);
  });
  $('logout').addEventListener('click', () => logout(''));
  $('submit-form').addEventListener('submit', submitJob);
  $('margins-form').addEventListener('submit', applyMargins);
  $('review-close').addEventListener('click', closeReview);
  $('opacity').addEventListener('input', applyOverlayOpacity);
  for (const button of document.querySelectorAll('.view-button')) {
    button.addEventListener('click', () => setView(button.dataset.view));
  }
  for (const button of document.querySelectorAll('.window-button')) {
    button.addEventListener('click', () => applyWindow(button.dataset.window));
  }
  for (const button of document.querySelectorAll('.download')) {
    button.addEventListener('click', () => download(button.dataset.file));
  }
  setView(state.view);
  applyWindow(state.windowPreset);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) login(saved);
  else $('token').focus();
}

document.addEventListener('DOMContentLoaded', init);
