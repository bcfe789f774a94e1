// The SRE console. Plain JavaScript, no framework, no build step.
//
// The page holds no data: it asks for the admin token (kept in sessionStorage, so it
// dies with the tab), then polls the token-protected JSON endpoints of the admin API.
// Every name shown comes from the server and is written with textContent, never as
// markup (the CSP forbids inline script as a second line of defence).
'use strict';

(() => {
  const TOKEN_KEY = 'switchboard-admin-token';
  const REFRESH_MS = 2000;
  const HOT_LIMIT = 10;

  const $ = (id) => document.getElementById(id);

  // What survives refreshes: which tree rows are open (by path of names, which is stable
  // across restarts, unlike actor ids), the selected node, the last answers.
  const state = {
    expanded: new Set(),
    collapsed: new Set(),
    treeNode: '',
    thisNode: null,
    timer: null,
    inFlight: false,
  };

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  }

  // A refused token sends the operator back to the login form.
  class Unauthorized extends Error {}

  async function api(method, path) {
    const response = await fetch(path, {
      method,
      headers: { Authorization: 'Bearer ' + token(), Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (response.status === 401) {
      throw new Unauthorized('the admin token was refused');
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { status: response.status, ok: response.ok, body };
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (key === 'text') node.textContent = String(value);
        else if (key === 'class') node.className = value;
        else if (key === 'dataset') Object.assign(node.dataset, value);
        else node.setAttribute(key, String(value));
      }
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function ms(value) {
    if (value === undefined || value === null) return '';
    if (value < 1) return value.toFixed(2) + ' ms';
    if (value < 10) return value.toFixed(1) + ' ms';
    if (value < 1000) return value.toFixed(0) + ' ms';
    if (value < 60000) return (value / 1000).toFixed(1) + ' s';
    if (value < 3600000) return Math.floor(value / 60000) + ' min ' + Math.floor((value % 60000) / 1000) + ' s';
    return Math.floor(value / 3600000) + ' h ' + Math.floor((value % 3600000) / 60000) + ' min';
  }

  function setStatus(text, isError) {
    const status = $('status');
    status.textContent = text;
    status.classList.toggle('error', Boolean(isError));
  }

  function showResult(text, isError) {
    const result = $('action-result');
    result.textContent = text;
    result.classList.toggle('error', Boolean(isError));
  }

  // ---- login -------------------------------------------------------------------------

  function showLogin(message) {
    stopPolling();
    $('login').hidden = false;
    $('app').hidden = true;
    $('bar').hidden = true;
    $('login-error').textContent = message || '';
    $('token').focus();
  }

  function showApp() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('bar').hidden = false;
    refresh();
  }

  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $('token').value = '';
    showApp();
  });

  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('');
  });

  // ---- tabs --------------------------------------------------------------------------

  for (const tab of document.querySelectorAll('.tab')) {
    tab.addEventListener('click', () => {
      for (const other of document.querySelectorAll('.tab')) {
        other.classList.toggle('active', other === tab);
        $(other.dataset.panel).hidden = other !== tab;
      }
    });
  }

  // ---- polling -----------------------------------------------------------------------

  function stopPolling() {
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
  }

  function schedule() {
    stopPolling();
    if (!$('pause').checked && token()) {
      state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  $('pause').addEventListener('change', () => {
    if ($('pause').checked) {
      stopPolling();
      setStatus('paused');
    } else {
      refresh();
    }
  });

  $('tree-node').addEventListener('change', () => {
    state.treeNode = $('tree-node').value;
    refresh();
  });

  // One refresh at a time; the next is scheduled when this one is done, so a slow node
  // never piles requests up.
  async function refresh() {
    if (state.inFlight || !token()) return;
    state.inFlight = true;
    try {
      const treePath = '/admin/tree' + (state.treeNode ? '?node=' + encodeURIComponent(state.treeNode) : '');
      const [tree, hot, cluster] = await Promise.all([
        api('GET', treePath),
        api('GET', '/admin/hot?limit=' + HOT_LIMIT),
        api('GET', '/admin/cluster'),
      ]);
      renderCluster(cluster, hot);
      renderHot(hot);
      renderTree(tree);
      setStatus('updated ' + new Date().toLocaleTimeString() + ($('pause').checked ? ' (paused)' : ''), false);
    } catch (error) {
      if (error instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        state.inFlight = false;
        showLogin('The admin token was refused.');
        return;
      }
      setStatus('refresh failed: ' + error.message, true);
    } finally {
      state.inFlight = false;
    }
    schedule();
  }

  // ---- tree --------------------------------------------------------------------------

  function isOpen(path, depth) {
    // Open by default: the root and its direct children (the supervisors).
    if (state.expanded.has(path)) return true;
    if (state.collapsed.has(path)) return false;
    return depth < 2;
  }

  function treeRow(actor, path, depth) {
    const item = el('li', {
      dataset: { name: actor.name, path, id: actor.id },
    });
    if (actor.conversation_id) item.dataset.conversation = actor.conversation_id;
    const hasChildren = actor.children_count > 0;
    const open = hasChildren && isOpen(path, depth);
    const toggle = el('button', {
      type: 'button',
      class: 'toggle' + (hasChildren ? '' : ' leaf'),
      'aria-expanded': hasChildren ? String(open) : null,
      'aria-label': (open ? 'collapse ' : 'expand ') + actor.name,
      text: hasChildren ? (open ? '▾' : '▸') : '·',
    });
    toggle.addEventListener('click', () => {
      if (isOpen(path, depth)) {
        state.expanded.delete(path);
        state.collapsed.add(path);
      } else {
        state.collapsed.delete(path);
        state.expanded.add(path);
      }
      if (state.lastTree) renderTree(state.lastTree);
    });
    const row = el('div', { class: 'row' },
      toggle,
      el('span', { class: 'name', text: actor.name }),
      el('span', { class: 'badge status ' + actor.status, text: actor.status }),
    );
    if (actor.mailbox !== undefined && actor.mailbox !== null) {
      row.append(el('span', { class: 'metric mailbox' + (actor.mailbox > 0 ? ' hot' : ''), title: 'messages waiting', text: 'mailbox ' + actor.mailbox }));
    }
    if (actor.busy_ms !== undefined && actor.busy_ms !== null) {
      row.append(el('span', { class: 'metric busy', title: 'time spent handling messages', text: 'busy ' + ms(actor.busy_ms) }));
    }
    if (actor.restarts !== undefined && actor.restarts !== null) {
      row.append(el('span', { class: 'metric' }, 'restarts ', el('span', { class: 'restarts', text: actor.restarts })));
    }
    if (hasChildren) {
      row.append(el('span', { class: 'metric children', text: actor.children_count + (actor.children_count === 1 ? ' child' : ' children') }));
    }
    if (actor.conversation_id && !state.treeNode) {
      const crash = el('button', { type: 'button', class: 'danger crash', text: 'crash…', 'aria-label': 'crash ' + actor.name });
      crash.addEventListener('click', () => crashConversation(actor.conversation_id));
      row.append(crash);
    }
    item.append(row);
    if (open) {
      const list = el('ul');
      for (const child of actor.children || []) {
        list.append(treeRow(child, path + '/' + child.name, depth + 1));
      }
      const shown = (actor.children || []).length;
      if (actor.children_count > shown) {
        list.append(el('li', { class: 'sampled', text: (actor.children_count - shown) + ' more not listed (a sample of ' + shown + ' of ' + actor.children_count + ', busiest first)' }));
      }
      item.append(list);
    }
    return item;
  }

  function renderTree(answer) {
    const tree = $('tree');
    if (answer.status !== 200 || !answer.body) {
      const message = (answer.body && (answer.body.message || answer.body.error)) || ('HTTP ' + answer.status);
      tree.replaceChildren(el('li', { class: 'error', text: 'tree unavailable: ' + message }));
      return;
    }
    state.lastTree = answer;
    const root = answer.body;
    $('tree-title').textContent = root.node ? 'of ' + root.node : '';
    tree.replaceChildren(treeRow(root, root.name, 0));
  }

  // ---- hot actors --------------------------------------------------------------------

  function renderHot(answer) {
    const deepest = $('hot-deepest');
    const busiest = $('hot-busiest');
    if (answer.status !== 200 || !answer.body) {
      const row = () => el('tr', null, el('td', { colspan: 4, class: 'error', text: 'unavailable: HTTP ' + answer.status }));
      deepest.replaceChildren(row());
      busiest.replaceChildren(row());
      return;
    }
    const hot = answer.body;
    $('hot-title').textContent = (hot.node ? 'on ' + hot.node + ', ' : '') + hot.sessions + ' sessions, ' + hot.conversations + ' conversations';
    const empty = (text) => el('tr', null, el('td', { colspan: 4, class: 'sub', text }));
    deepest.replaceChildren(...(hot.deepest.length ? hot.deepest.map((a) => el('tr', { dataset: { id: a.id } },
      el('td', { class: 'name', text: a.name }),
      el('td', { class: 'num', text: a.mailbox }),
      el('td', { class: 'num', text: ms(a.busy_ms) }),
      el('td', { class: 'num', text: ms(a.age_ms) }),
    )) : [empty('no messages waiting anywhere')]));
    busiest.replaceChildren(...(hot.busiest.length ? hot.busiest.map((a) => el('tr', { dataset: { id: a.id } },
      el('td', { class: 'name', text: a.name }),
      el('td', { class: 'num', text: ms(a.busy_ms) }),
      el('td', { class: 'num', text: a.age_ms > 0 ? (100 * a.busy_ms / a.age_ms).toFixed(2) + ' %' : '' }),
      el('td', { class: 'num', text: a.mailbox }),
    )) : [empty('no actor has handled a message yet')]));
  }

  // ---- cluster -----------------------------------------------------------------------

  function renderCluster(answer, hot) {
    const body = $('cluster-nodes');
    const select = $('tree-node');
    if (answer.status === 404 && answer.body && answer.body.error === 'not_clustered') {
      state.thisNode = null;
      $('node-label').textContent = 'single node';
      $('cluster-note').textContent = 'This node is not part of a cluster.';
      const counts = hot.status === 200 && hot.body ? hot.body : {};
      body.replaceChildren(el('tr', { dataset: { node: 'this node' } },
        el('td', { text: 'this node' }),
        el('td', null, el('span', { class: 'badge self', text: 'self' })),
        el('td', { text: 'yes' }),
        el('td', { class: 'num', text: counts.sessions ?? '' }),
        el('td', { class: 'num', text: counts.conversations ?? '' }),
        el('td', { text: 'now' }),
        el('td', { text: location.host }),
      ));
      $('redis').textContent = '';
      select.replaceChildren(el('option', { value: '', text: 'this node' }));
      select.disabled = true;
      return;
    }
    if (answer.status !== 200 || !answer.body) {
      body.replaceChildren(el('tr', null, el('td', { colspan: 7, class: 'error', text: 'cluster unavailable: HTTP ' + answer.status })));
      return;
    }
    const report = answer.body;
    state.thisNode = report.node;
    $('node-label').textContent = 'node ' + report.node;
    $('cluster-note').textContent = report.members.length + ' members: ' + report.members.join(', ');
    body.replaceChildren(...report.nodes.map((n) => el('tr', { dataset: { node: n.name } },
      el('td', { text: n.name }),
      el('td', null,
        el('span', { class: 'badge ' + n.status, text: n.status }),
        n.draining ? el('span', { class: 'badge suspect', text: 'draining' }) : null),
      el('td', { text: n.member ? 'yes' : 'no' }),
      el('td', { class: 'num', text: n.sessions + (n.counts_stale ? ' (stale)' : '') }),
      el('td', { class: 'num', text: n.conversations + (n.counts_stale ? ' (stale)' : '') }),
      el('td', { text: n.status === 'self' ? 'now' : ms(n.last_heard_ms) + ' ago' }),
      el('td', { text: n.admin_addr || '' }),
    )));
    const redis = report.redis;
    $('redis').textContent = redis
      ? 'Redis: ' + (redis.ok ? 'ok (' + Number(redis.latency_ms).toFixed(1) + ' ms)' : 'down') + (redis.error ? ': ' + redis.error : '')
      : 'Redis: not configured';
    // The tree selector: every node this one knows, itself first.
    const names = report.nodes.map((n) => n.name);
    const current = Array.from(select.options).map((o) => o.value);
    const wanted = [''].concat(names.filter((n) => n !== report.node));
    if (current.join('\n') !== wanted.join('\n')) {
      select.replaceChildren(...wanted.map((name) => el('option', { value: name, text: name || report.node + ' (this node)' })));
      select.value = wanted.includes(state.treeNode) ? state.treeNode : '';
      state.treeNode = select.value;
    }
    select.disabled = false;
  }

  // ---- confirmations and actions -----------------------------------------------------

  // Resolves true when the operator confirms. With `expected`, the confirm button stays
  // disabled until that exact text is typed (a drain cannot be one stray click).
  function confirmDialog(title, text, expected) {
    return new Promise((resolve) => {
      const dialog = $('confirm');
      const typed = $('confirm-typed');
      const ok = $('confirm-ok');
      $('confirm-title').textContent = title;
      $('confirm-text').textContent = text;
      $('confirm-typed-label').hidden = !expected;
      $('confirm-expected').textContent = expected || '';
      typed.value = '';
      ok.disabled = Boolean(expected);
      const check = () => { ok.disabled = Boolean(expected) && typed.value.trim() !== expected; };
      const done = (answer) => {
        typed.removeEventListener('input', check);
        ok.removeEventListener('click', onOk);
        $('confirm-cancel').removeEventListener('click', onCancel);
        dialog.removeEventListener('cancel', onCancel);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const onOk = () => { if (!ok.disabled) done(true); };
      const onCancel = () => done(false);
      typed.addEventListener('input', check);
      ok.addEventListener('click', onOk);
      $('confirm-cancel').addEventListener('click', onCancel);
      dialog.addEventListener('cancel', onCancel);
      dialog.showModal();
      (expected ? typed : $('confirm-cancel')).focus();
    });
  }

  $('confirm-form').addEventListener('submit', (event) => event.preventDefault());

  async function crashConversation(id) {
    const confirmed = await confirmDialog(
      'Crash conversation?',
      'The actor of conversation ' + id + ' will fail now; its supervisor restarts it from the store. Clients may see one UNAVAILABLE and retry.',
      null,
    );
    if (!confirmed) {
      showResult('crash cancelled', false);
      return;
    }
    try {
      const answer = await api('POST', '/admin/conversations/' + encodeURIComponent(id) + '/crash');
      if (answer.status === 202) {
        showResult('crashed conversation ' + id + ' (actor ' + answer.body.crashed + '); watch its supervisor\'s restarts', false);
      } else {
        const why = answer.body ? (answer.body.message || answer.body.error) : 'HTTP ' + answer.status;
        showResult('crash refused: ' + why + (answer.status === 404 ? ' (the conversation has no actor on this node)' : ''), true);
      }
    } catch (error) {
      if (error instanceof Unauthorized) { showLogin('The admin token was refused.'); return; }
      showResult('crash failed: ' + error.message, true);
    }
    refresh();
  }

  $('crash-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const id = $('crash-id').value.trim();
    if (!/^[0-9a-fA-F-]{32,36}$/.test(id)) {
      showResult('not a conversation id (a UUID)', true);
      return;
    }
    crashConversation(id);
  });

  $('drain').addEventListener('click', async () => {
    const name = state.thisNode;
    const confirmed = await confirmDialog(
      'Drain ' + (name || 'this node') + '?',
      'The node leaves the placement, hands its conversations to the other members, closes its devices and exits. This cannot be undone from here.',
      name || 'drain',
    );
    if (!confirmed) {
      $('drain-result').textContent = 'drain cancelled';
      return;
    }
    try {
      const answer = await api('POST', '/admin/drain');
      if (answer.status === 202) {
        $('drain-result').textContent = 'draining ' + answer.body.draining + '; the node exits when its work is handed off';
      } else {
        $('drain-result').textContent = 'drain refused: ' + (answer.body ? (answer.body.message || answer.body.error) : 'HTTP ' + answer.status);
      }
    } catch (error) {
      if (error instanceof Unauthorized) { showLogin('The admin token was refused.'); return; }
      $('drain-result').textContent = 'drain failed: ' + error.message;
    }
  });

  // ---- start -------------------------------------------------------------------------

  if (token()) showApp(); else showLogin('');
})();
