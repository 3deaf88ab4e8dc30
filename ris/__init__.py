"""The RIS side: radiology reports in, ACKs out.

An inbound interface beside ``scp``: HL7 v2 ``ORU^R01`` results over MLLP
(:mod:`ris.server`, parsed by :mod:`ris.oru`) and the reports the PACS pushes with the
study (Text SR, Encapsulated PDF: :mod:`ris.dicom`), both recorded as
:class:`store.models.Report` rows by :mod:`ris.reports`. May import ``store``,
``release`` and ``telemetry``; never ``delivery``, ``portal`` or ``node``. Named ``ris``,
never ``hl7``: that would shadow the library of that name.
"""
