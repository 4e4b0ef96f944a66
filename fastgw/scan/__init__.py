"""fastgw.scan"""
