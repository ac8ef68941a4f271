"""The DICOM node's rules file (TOML): who may send, what runs on which series, and where the results go.

A department states once, in a file it can review, what a physicist would otherwise decide per patient::

    [node]                          # optional; command-line options win
    ae_title = "NNUNET_RAS"
    port = 11112
    quiet_s = 10                    # a series is complete this long after its last slice (or at association end)

    [senders.TPS]                   # calling AE titles allowed to send; any other is rejected at association
    host = "10.0.0.5"               # optional: only from this address
    port = 104                      # the sender's own Storage SCP, for send_to = ["sender"]
    owner = "physics"               # the service user whose jobs these are (default: "dicom"; admins see all)

    [destinations.ARCHIVE]          # other Storage SCPs results can go to
    ae_title = "ARCHIVE"
    host = "10.0.0.9"
    port = 11112

    [models.liver]                  # optional: a model other than the one the service serves ("default")
    model = ["/models/Dataset501_Liver/nnUNetTrainerRAS__nnUNetRASPlans__3d_fullres"]
    folds = ["0", "1", "2", "3", "4"]
    roi_names = { tumour = "GTV", liver = "Liver" }
    roi_colors = { GTV = [255, 0, 0] }

    [[rules]]                       # the first rule whose patterns all match a series runs
    ae_title = "TPS"                # shell patterns (fnmatch), case-insensitive; a missing key matches anything
    modality = "CT"
    series_description = "*ABD*"
    body_part = "*"
    model = "liver"
    margins = ["CTV=GTV+5@Liver", "PTV=CTV+5"]
    send_to = ["sender", "ARCHIVE"]
    seg = true                      # also send the DICOM SEG (default: the RTSTRUCT only)

A series that no rule matches becomes a refused job (visible, with the reason), so nothing arrives silently unread.
"""
import fnmatch
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from nnunet_ras.errors import UserInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_MODEL = 'default'
DEFAULT_OWNER = 'dicom'
SENDER = 'sender'
MATCHED_ATTRIBUTES = {'ae_title': 'calling AE title', 'modality': 'Modality',
                      'series_description': 'SeriesDescription', 'body_part': 'BodyPartExamined'}


class RulesError(UserInputError):
    pass


def check_ae_title(title: str, where: str) -> str:
    """An AE title as DICOM allows it: 1-16 characters of the default repertoire, no backslash, not only spaces."""
    if not isinstance(title, str) or not title.strip() or len(title) > 16 or '\\' in title or \
            not all(32 <= ord(c) < 127 for c in title):
        raise RulesError(f"{where}: AE title {title!r} must be 1-16 printable ASCII characters without '\\'")
    return title.strip()


@dataclass
class Peer:
    """A Storage SCP the node sends to."""
    name: str
    ae_title: str
    host: str
    port: int

    def as_dict(self) -> dict:
        return {'name': self.name, 'ae_title': self.ae_title, 'host': self.host, 'port': self.port}


@dataclass
class Sender:
    ae_title: str
    host: Optional[str] = None
    port: Optional[int] = None
    owner: str = DEFAULT_OWNER


@dataclass
class Rule:
    index: int
    patterns: Dict[str, str]
    model: str = DEFAULT_MODEL
    margins: List[str] = field(default_factory=list)
    send_to: List[str] = field(default_factory=lambda: [SENDER])
    seg: bool = False

    def matches(self, values: Dict[str, str]) -> bool:
        return all(fnmatch.fnmatchcase((values.get(key) or '').upper(), pattern.upper())
                   for key, pattern in self.patterns.items())


@dataclass
class NodeRules:
    path: str
    node: dict
    senders: Dict[str, Sender]
    destinations: Dict[str, Peer]
    models: Dict[str, dict]
    rules: List[Rule]

    def route(self, values: Dict[str, str]) -> Optional[Rule]:
        """The first rule matching a series (``values``: ae_title, modality, series_description, body_part)."""
        return next((rule for rule in self.rules if rule.matches(values)), None)

    def destinations_for(self, rule: Rule, calling_ae: str, address: str) -> List[Peer]:
        """Where a series' results go; 'sender' is the calling AE at its configured host (else the address it
        connected from) and port."""
        peers = []
        for name in rule.send_to:
            if name == SENDER:
                sender = self.senders[calling_ae]
                peers.append(Peer(SENDER, calling_ae, sender.host or address, sender.port))
            else:
                peers.append(self.destinations[name])
        return peers

    def explain_no_rule(self, values: Dict[str, str]) -> str:
        shown = ', '.join(f"{MATCHED_ATTRIBUTES[k]} {values.get(k) or '(empty)'!r}" for k in MATCHED_ATTRIBUTES)
        return f"no rule in {self.path} matches this series ({shown}); nothing was run or sent"


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RulesError(f"{where}: [{key}] must be a table")
    return value


def _port(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise RulesError(f"{where}: port {value!r} must be a number from 1 to 65535")
    return value


def _unknown_keys(entry: dict, allowed, where: str) -> None:
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")


def load_rules(path: str) -> NodeRules:
    """Reads and checks a rules file; every problem is an error naming the file and the entry."""
    try:
        with open(path, 'rb') as f:
            data = tomllib.load(f)
    except OSError as e:
        raise RulesError(f"{path}: cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{path}: not valid TOML ({e})") from None
    _unknown_keys(data, ('node', 'senders', 'destinations', 'models', 'rules'), path)
    node = _table(data, 'node', path)
    _unknown_keys(node, ('ae_title', 'port', 'quiet_s', 'send_attempts', 'send_backoff_s'), f"{path} [node]")
    if 'ae_title' in node:
        check_ae_title(node['ae_title'], f"{path} [node]")
    if 'port' in node:
        _port(node['port'], f"{path} [node]")

    senders = {}
    for title, entry in _table(data, 'senders', path).items():
        where = f"{path} [senders.{title}]"
        check_ae_title(title, where)
        if not isinstance(entry, dict):
            raise RulesError(f"{where}: must be a table")
        _unknown_keys(entry, ('host', 'port', 'owner'), where)
        senders[title.strip()] = Sender(title.strip(), entry.get('host'),
                                        _port(entry['port'], where) if 'port' in entry else None,
                                        str(entry.get('owner', DEFAULT_OWNER)))
    if not senders:
        raise RulesError(f"{path}: no [senders.AE_TITLE] table: the node would accept nobody")

    destinations = {}
    for name, entry in _table(data, 'destinations', path).items():
        where = f"{path} [destinations.{name}]"
        if name == SENDER:
            raise RulesError(f"{where}: '{SENDER}' is reserved for the sending AE")
        if not isinstance(entry, dict) or not {'ae_title', 'host', 'port'} <= set(entry):
            raise RulesError(f"{where}: needs ae_title, host and port")
        _unknown_keys(entry, ('ae_title', 'host', 'port'), where)
        destinations[name] = Peer(name, check_ae_title(entry['ae_title'], where), str(entry['host']),
                                  _port(entry['port'], where))

    models = _table(data, 'models', path)
    for name, entry in models.items():
        where = f"{path} [models.{name}]"
        if not isinstance(entry, dict) or not entry.get('model'):
            raise RulesError(f"{where}: needs model = [\"MODEL_FOLDER\", ...] (nnU-Net's trained model folder)")
        _unknown_keys(entry, ('model', 'folds', 'checkpoint', 'disable_tta', 'step_size', 'bf16',
                              'torch_resampling', 'postprocessing', 'roi_names', 'roi_colors'), where)

    rules = []
    entries = data.get('rules', [])
    if not isinstance(entries, list) or not entries:
        raise RulesError(f"{path}: no [[rules]]: say which series to contour (an empty [[rules]] matches all)")
    for index, entry in enumerate(entries, 1):
        where = f"{path} [[rules]] #{index}"
        _unknown_keys(entry, (*MATCHED_ATTRIBUTES, 'model', 'margins', 'send_to', 'seg'), where)
        rule = Rule(index, {k: str(entry[k]) for k in MATCHED_ATTRIBUTES if k in entry},
                    str(entry.get('model', DEFAULT_MODEL)), [str(m) for m in entry.get('margins', [])],
                    [str(d) for d in entry.get('send_to', [SENDER])], bool(entry.get('seg', False)))
        if rule.model != DEFAULT_MODEL and rule.model not in models:
            raise RulesError(f"{where}: model {rule.model!r} is neither '{DEFAULT_MODEL}' nor under [models]")
        for name in rule.send_to:
            if name != SENDER and name not in destinations:
                raise RulesError(f"{where}: send_to {name!r} is neither '{SENDER}' nor under [destinations]")
        if SENDER in rule.send_to:
            titles = [t for t in senders if fnmatch.fnmatchcase(t.upper(), rule.patterns.get('ae_title', '*').upper())]
            missing = [t for t in titles if senders[t].port is None]
            if missing:
                raise RulesError(f"{where}: sends to 'sender', but [senders.{missing[0]}] has no port (its Storage "
                                 f"SCP's port)")
        rules.append(rule)
    return NodeRules(os.path.abspath(path), node, senders, destinations, models, rules)
